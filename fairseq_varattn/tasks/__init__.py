from . import vqa  # noqa: F401
