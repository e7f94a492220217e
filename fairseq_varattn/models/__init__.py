from . import varattn_lstm, varattn_vqa  # noqa: F401
