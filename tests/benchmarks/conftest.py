import pytest


@pytest.fixture(autouse=True)
def isolated_cache():
    """Benchmarks use the user's cache (MIMBENCH_HOME or ~/.cache/mimbench): the tiny teachers
    take minutes to train, and their training is not what is measured."""
