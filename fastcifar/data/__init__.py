"""Data wing: CIFAR-10 on disk (`cifar.py`: find, verify, safe-unpickle, `locate_cifar`), the official archive
(`download.py`), synthetic test data (`synthetic.py`), the loader contract (`loader_contract.py`), `make_loader`
(`loaders.py`) and the two loaders (`tensor_loader.py`, `dali_loader.py`)."""
