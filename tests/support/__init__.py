"""Plain helpers shared by the test packages (importable code, no fixtures, no tests).

Layout of the suite:
- `tests/support/*.py`: code several test modules share (configurations, generators of worlds and
  rasters, the PostgreSQL starter). Test modules and conftests import from here, and only here.
- `tests/conftest.py` and `tests/<package>/conftest.py`: the fixtures, built on these helpers.
- `tests/<package>/test_*.py`: tests; no test module imports another test module or a conftest.
"""
