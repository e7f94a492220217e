from . import varattn_lstm  # noqa: F401
