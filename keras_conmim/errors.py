"""The errors the library raises where a run cannot go on. Library code
raises them; only the recipes turn them into one `error: ...` line and an
exit status (recipes/recipe_main.py). Each message names the problem and the
fix. They subclass ValueError / RuntimeError, so code that caught those
before still does."""


class ConMIMError(Exception):
    """Base class: anything a recipe reports as one line."""


class ConfigError(ConMIMError, ValueError):
    """A setting, flag or config file that cannot work (found before training)."""


class ResumeError(ConfigError):
    """A run folder that this command cannot resume (other settings, or no
    checkpoint that loads)."""


class RunInUseError(ConMIMError, RuntimeError):
    """A run folder that another live run holds (`runs.folder.hold`)."""


class StorageError(ConMIMError, OSError):
    """A folder that cannot take the run's files (not writable, a full disk)."""


class DataError(ConMIMError, ValueError):
    """Data that cannot be read or does not fit the run."""


class NonFiniteLossError(ConMIMError, RuntimeError):
    """The loss became NaN or Inf; training was stopped."""
