from . import varattn_lstm, varattn_transformer, varattn_vqa  # noqa: F401
