"Shared pytest settings: markers, and one torch thread per test process (the machine has 2 cores)."
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s (CI runs it; `-m 'not slow'` skips it)")
