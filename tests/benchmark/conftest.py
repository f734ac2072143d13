from ..integration.conftest import ade_root  # noqa: F401  (shared generated data)
