"""Data parallelism (keras_conmim.models.distribute): N devices reach what one
device reaches with the same global batch and seed, checkpoints cross
between the two, the recipe runs on forced host devices, and impossible
requests fail with the numbers before anything compiles.

The multi-device runs are subprocesses (tests/distributed_run.py): the device
count is fixed before JAX / TensorFlow start."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_conmim as kc
from keras_conmim.models import distribute
from conftest import ROOT, recipe_command, run_recipe

BACKEND = keras.backend.backend()
# 4 forced host devices on JAX; TensorFlow splits the CPU into 2 logical ones.
DEVICES = {"jax": 4, "tensorflow": 2}
HELPER = os.path.join(ROOT, "tests", "distributed_run.py")


def _with_devices(devices):
    """XLA_FLAGS for `devices` forced host devices, keeping the suite's other
    XLA flags (conftest.py)."""
    return " ".join([os.environ.get("XLA_FLAGS", ""),
                     f"--xla_force_host_platform_device_count={devices}"]).strip()


def _run(devices, mode, out, *extra):
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    done = subprocess.run([sys.executable, HELPER, "--devices", str(devices), "--mode", mode,
                           "--out", out, *extra],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _hosts(argv, hosts=2, devices=2):
    """`argv` run as `hosts` processes of `devices` forced JAX CPU devices
    each, joined by keras.distribution.initialize() (jax.distributed over
    gloo) from the KERAS_DISTRIBUTION_* variables; their stdouts."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": _with_devices(devices),
           "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": str(hosts)}
    procs = [subprocess.Popen([sys.executable, *[a.format(host=i) for a in argv]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)})
             for i in range(hosts)]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


def _assert_same_state(a, b):
    a, b = np.load(a), np.load(b)
    assert sorted(a.files) == sorted(b.files)  # every variable, optimizer state included
    for key in a.files:
        # rtol: fused attention sums in another order on split batches (seen: 2.3e-5)
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-4, err_msg=key)


@pytest.mark.skipif(BACKEND not in DEVICES, reason="torch: no multi-device fit (refusal tested below)")
def test_data_parallel_equals_one_device_and_checkpoints_cross(tmp_path):
    n = DEVICES[BACKEND]
    p = lambda name: os.path.join(tmp_path, name)  # noqa: E731
    # 5 steps each, with a checkpoint written after step 3
    line = _run(1, "none", p("one.npz"), "--save-at", "3", "--checkpoint", p("one.keras"))
    assert "replicas=1" in line and "step=5" in line
    line = _run(n, "data_parallel", p("many.npz"), "--save-at", "3", "--checkpoint", p("many.keras"))
    assert f"replicas={n} per_device={8 // n} step=5" in line
    # student, teacher, BN statistics, seed states, step counter, optimizer
    _assert_same_state(p("one.npz"), p("many.npz"))
    # a checkpoint from N devices continues on one, and the other way round
    _run(1, "none", p("one_from_many.npz"), "--resume", p("many.keras"))
    _assert_same_state(p("one.npz"), p("one_from_many.npz"))
    _run(n, "data_parallel", p("many_from_one.npz"), "--resume", p("one.keras"))
    _assert_same_state(p("one.npz"), p("many_from_one.npz"))


@pytest.mark.skipif(BACKEND != "jax", reason="multi-process JAX (jax.distributed over gloo on CPU)")
def test_two_hosts_equal_one_device_and_their_checkpoint_continues_on_one(tmp_path):
    # Two processes of 2 devices each: each host reads only its half of every
    # global batch, the chief alone writes the checkpoint (after step 3), and
    # the run equals one device's.
    p = lambda name: os.path.join(tmp_path, name)  # noqa: E731
    outputs = _hosts([HELPER, "--devices", "2", "--mode", "data_parallel", "--out",
                      p("host{host}.npz"), "--save-at", "3", "--checkpoint", p("host{host}.keras")])
    assert all("replicas=4 per_device=2 step=5" in out for out in outputs)
    assert os.path.isfile(p("host0.keras")) and not os.path.exists(p("host1.keras"))  # chief only
    _run(1, "none", p("one.npz"))
    _assert_same_state(p("one.npz"), p("host0.npz"))
    _assert_same_state(p("one.npz"), p("host1.npz"))
    _run(1, "none", p("one_from_hosts.npz"), "--resume", p("host0.keras"))
    _assert_same_state(p("one.npz"), p("one_from_hosts.npz"))


@pytest.mark.skipif(BACKEND != "jax", reason="forced host devices are a JAX feature")
def test_recipe_runs_as_a_two_host_job(tmp_path):
    # Two hosts of 2 devices: the recipe as a multi-host job runs it, the
    # chief alone writing config, checkpoints, logs, view grids and models.
    out = os.path.join(tmp_path, "run")
    cmd = [os.path.join(ROOT, "recipes", "pretrain.py"), "--backend", "jax",
           "--distribute", "data_parallel", "--epochs", "1", "--steps-per-epoch", "3",
           "--batch-size", "8", "--output", out, "--view-grid-every", "1"]
    for stdout in _hosts(cmd):
        assert "4 devices on 2 host(s), global batch 8 = 2 per device" in stdout
        assert "done:" in stdout
    assert os.path.isfile(os.path.join(out, "teacher_encoder.keras"))
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [  # with the initial state
        "ckpt-00000000.keras", "ckpt-00000003.keras"]
    assert os.listdir(os.path.join(out, "views")) == ["views-epoch0001.png"]
    # a global batch that does not split: the numbers, before anything compiles
    bad = recipe_command("pretrain", *cmd[3:-6], "--batch-size", "10", "--output", out + "_bad",
                         env={"XLA_FLAGS": _with_devices(4)}, timeout=900)
    assert bad.returncode != 0
    assert "Global batch 10 does not split over 4 devices (2.5 each)" in bad.stderr
    assert "--batch-size 8" in bad.stderr and "ConMIM pre-training:" not in bad.stdout


def test_impossible_requests_fail_with_the_numbers():
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="torch trainer has no multi-device"):
            distribute.data_parallel("data_parallel")
    else:  # this process sees one device
        with pytest.raises(ValueError, match="asks for several devices but .* sees 1"):
            distribute.data_parallel("data_parallel")
    plan = distribute.data_parallel("auto")  # one device: auto is no distribution
    assert plan.kind == "none" and plan.replicas == 1 and plan.is_chief
    with pytest.raises(ValueError, match="distribute mode"):
        distribute.data_parallel("ddp")
    with pytest.raises(ValueError, match=r"Global batch 100 does not split over 8 devices \(12.5"):
        distribute.Plan("jax_data_parallel", replicas=8).check_batch(100)
    assert distribute.Plan("jax_data_parallel", replicas=8, host=1, hosts=2).per_host_batch(64) == 32
    assert not distribute.Plan(host=1, hosts=2).is_chief  # writes no files


@pytest.mark.skipif(BACKEND != "torch", reason="the recipe's own refusal (the library's is above)")
def test_recipe_refuses_data_parallel_on_torch(tmp_path):
    done = run_recipe("pretrain", "--distribute", "data_parallel", "--output", tmp_path)
    assert done.returncode == 2 and "not on torch" in done.stderr
    assert "--backend jax or tensorflow" in done.stderr


def test_host_shards_are_disjoint_cover_the_batch_and_resume():
    source = kc.data.from_arrays(np.zeros((50, 4, 4, 1), "uint8"))
    for step in (0, 3, 7):  # 7: the second epoch
        glob = source.batch_indices(12, seed=5, step=step)
        shards = [source.shard_indices(6, 5, step, num_shards=2, shard_index=i) for i in (0, 1)]
        assert not set(shards[0]) & set(shards[1])
        np.testing.assert_array_equal(np.concatenate(shards), glob)  # the one-host batch
    with pytest.raises(ValueError, match=r"shard_index 2 is not in \[0, 2\)"):
        source.shard_indices(6, 5, 0, num_shards=2, shard_index=2)
    images = np.random.RandomState(0).randint(0, 256, (50, 4, 4, 1)).astype("uint8")
    source = kc.data.from_arrays(images)
    from keras_conmim.data.sources import _has_tensorflow

    for backend in ("numpy", "tf") if _has_tensorflow() else ("numpy",):
        ds = source.dataset(6, seed=5, backend=backend, num_shards=2, shard_index=1)
        first = [np.asarray(b[0] if isinstance(b, tuple) else b)
                 for b in _take(ds, 5)]
        resumed = source.dataset(6, seed=5, start_step=3, backend=backend, num_shards=2,
                                 shard_index=1)
        np.testing.assert_array_equal(np.asarray(_first(resumed)), first[3])
        np.testing.assert_array_equal(first[3], images[source.shard_indices(6, 5, 3, num_shards=2,
                                                                            shard_index=1)])
    with pytest.raises(ValueError, match="larger than the 50 images"):
        source.dataset(30, num_shards=2)


def _take(ds, n):
    if hasattr(ds, "take"):
        return list(ds.take(n).as_numpy_iterator())
    return [ds[i] for i in range(n)]


def _first(ds):
    b = _take(ds, 1)[0]
    return b[0] if isinstance(b, tuple) else b
