"""The test suite as a package: a spawned torch.multiprocessing worker imports its test module as
tests.FOLDER.test_NAME, which a top-level `tests` package some dependencies install would otherwise shadow."""
