"""Shared test setup: tests marked ``fashion_mnist`` need the real dataset files (CI installs the Debian
package dataset-fashion-mnist). Without them they are skipped with that reason; a corrupt file still fails."""

import pytest


def _fashion_mnist_available() -> bool:
    from minibigr.data import DatasetNotFound, load_dataset

    try:
        load_dataset("fashion-mnist", "test", download=False)
    except DatasetNotFound:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if "fashion_mnist" in item.keywords]
    if marked and not _fashion_mnist_available():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason="Fashion-MNIST files not installed"))
