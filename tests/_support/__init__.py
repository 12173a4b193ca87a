"""Code the tests share: tiny models and data, config fragments, servers, and task modules that worker
processes import (``tests/`` is on ``sys.path`` through pytest's rootdir conftest, so ``from _support.common
import ...`` works from every test folder)."""
