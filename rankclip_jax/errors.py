"""The errors that mean "what the user gave cannot work" (a config value, a data path, a data
file, a missing evaluation set, a weight file). Entry points report them as one line naming the
field or file and the fix, without a traceback; anything else is a bug and keeps its traceback.

Every such error derives from `UserError` (and from the built-in error it refines, e.g.
ValueError), so `except USER_ERRORS` catches each one, including any added later. This module
imports nothing from the package: any module may raise these.
"""


class UserError(Exception):
  """What the user gave cannot work; the message names the field or file and the fix."""


class ConfigError(UserError, ValueError):
  """A config field has a value that cannot work; the message names the field and the fix."""


USER_ERRORS = (UserError,)
