from .alignment import CategoricalAlignment, DirichletAlignment  # noqa: F401
from .output_layer import AlignmentOutputLayer  # noqa: F401
from .scorer import AttentionScorer  # noqa: F401
