"""The errors that mean "what the user gave cannot work" (a config value, a data path, a data
file, a missing evaluation set). Entry points report them as one line naming the field or file and
the fix, without a traceback; anything else is a bug and keeps its traceback."""

from rankclip_jax.config_validation import ConfigError
from rankclip_jax.data.csv_files import CsvFormatError
from rankclip_jax.data.files import DataPathError
from rankclip_jax.data.tfds_eval import EvalDataNotFound
from rankclip_jax.data.webdataset import ShardError
from rankclip_jax.interop.open_clip import ConversionError
from rankclip_jax.interop.tensor_files import WeightFileError

USER_ERRORS = (ConfigError, DataPathError, ShardError, CsvFormatError, EvalDataNotFound,
               ConversionError, WeightFileError)
