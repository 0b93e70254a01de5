"""Run a Flow YAML as ``jina flow --uses`` in its own process group, for demos and tests.

Jina flows whose executor failed to start may neither exit nor honour SIGTERM, so a
:class:`FlowProcess` waits for readiness with a deadline (failing early if the process
dies), and on the way out signals the whole group, then SIGKILLs it after a grace period.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def with_free_ports(flow_yaml, out_dir) -> Path:
    """A copy of ``flow_yaml`` in ``out_dir`` whose gateway ports are free ones (for tests that run
    side by side)."""
    config = yaml.safe_load(Path(flow_yaml).read_text())
    protocols = config['with']['protocol']
    config['with']['port'] = [free_port() for _ in protocols] if isinstance(protocols, list) else free_port()
    out = Path(out_dir) / f'{Path(flow_yaml).stem}.free-ports.yml'
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def flow_ports(flow_yaml) -> dict:
    """``{'grpc': port, 'http': port}`` as declared in a Flow YAML's ``with`` block."""
    config = yaml.safe_load(Path(flow_yaml).read_text())['with']
    protocols = config['protocol'] if isinstance(config['protocol'], list) else [config['protocol']]
    ports = config['port'] if isinstance(config['port'], list) else [config['port']]
    return {p.lower(): int(port) for p, port in zip(protocols, ports)}


class FlowProcess:
    """``with FlowProcess('flows/search.yml', cwd=tmp) as flow: Client(port=flow.ports['grpc'])``;
    ``free_ports=True`` serves on free ports instead of the YAML's."""

    def __init__(self, flow_yaml, cwd, log_path: Optional[Path] = None, ready_timeout: float = 180.0,
                 free_ports: bool = False):
        self.cwd = Path(cwd)
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.flow_yaml = Path(flow_yaml).resolve()
        if free_ports:
            self.flow_yaml = with_free_ports(self.flow_yaml, self.cwd).resolve()
        self.ports = flow_ports(self.flow_yaml)
        self.log_path = log_path or self.cwd / f'{self.flow_yaml.stem}.log'
        self.ready_timeout = ready_timeout
        self.process: Optional[subprocess.Popen] = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return '\n'.join(self.log_path.read_text(errors='replace').splitlines()[-lines:])
        except FileNotFoundError:
            return ''

    def start(self) -> 'FlowProcess':
        """Launch and wait until the Flow serves."""
        return self.launch().wait_ready()

    def launch(self) -> 'FlowProcess':
        """Start the process without waiting (to start several flows at once)."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, 'JINA_OPTOUT_TELEMETRY': '1', 'JINA_LOG_LEVEL': os.environ.get('JINA_LOG_LEVEL', 'INFO')}
        jina = Path(sys.executable).with_name('jina')
        self._log = open(self.log_path, 'w')
        self.process = subprocess.Popen([str(jina), 'flow', '--uses', str(self.flow_yaml)], cwd=self.cwd, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self) -> 'FlowProcess':
        """Block until the gateway answers; raise (with the log's tail) if the process dies or
        the deadline passes."""
        from jina import Client

        deadline = time.monotonic() + self.ready_timeout
        client = Client(port=self.ports['grpc'])
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f'{self.flow_yaml.name} exited with {self.process.returncode}:\n{self.log_tail()}')
            if 'Flow is ready to serve' in self.log_path.read_text(errors='replace') and client.is_flow_ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f'{self.flow_yaml.name} not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}')

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self._close_log()
            return
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # executors run in child processes of the same group: make sure none survives
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, '_log', None)
        if log and not log.closed:
            log.close()

    def __enter__(self) -> 'FlowProcess':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
