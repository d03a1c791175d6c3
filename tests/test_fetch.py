"""Downloads (schn_jax.download) against an HTTP server run by the test: checked,
cached, refused when corrupt or cut short, named with their URL and path when
offline; and `train.py --config=configs/cifar.py` end to end, fetching a fake
CIFAR-10 archive and fake AlexNet weights from that server."""

import functools
import hashlib
import http.server
import importlib.util
import io
import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from configs import default
from schn_jax import download, errors, inference
from schn_jax.data import build_dataset, default_data_config, sources
from schn_jax.interop import pretrained, weights

import support


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves the server's folder; counts requests; cuts short the files named in
  `server.cut_short` (the full Content-Length, then half the body, then closes)."""

  def do_GET(self):
    name = self.path.lstrip("/")
    self.server.requests.append(name)
    if name in self.server.cut_short:
      body = (pathlib.Path(self.directory) / name).read_bytes()
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body[: len(body) // 2])
      self.close_connection = True
      return
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture
def server(tmp_path, monkeypatch):
  """An HTTP server on 127.0.0.1 serving tmp_path/served, set as the download mirror;
  the cache is tmp_path/cache."""
  served = tmp_path / "served"
  served.mkdir()
  handler = functools.partial(_Handler, directory=str(served))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  httpd.requests, httpd.cut_short, httpd.served = [], set(), served
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv(download.URL_ENV, f"http://127.0.0.1:{httpd.server_port}/files")
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def unused_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def sha256(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def serve(server, name, content):
  (server.served / "files").mkdir(exist_ok=True)
  path = server.served / "files" / name
  path.write_bytes(content)
  return path


def cache_listing(tmp_path):
  cache = tmp_path / "cache"
  return sorted(p.name for p in cache.rglob("*")) if cache.exists() else []


BLOB = bytes(range(256)) * 64
BLOB_FILE = download.RemoteFile(
  "https://example.org/models/blob-0000.bin", f"sha256:{hashlib.sha256(BLOB).hexdigest()[:8]}"
)


def test_a_good_download_is_checked_and_cached(server, tmp_path):
  serve(server, "blob-0000.bin", BLOB)
  (path,) = download.fetch_all([BLOB_FILE])
  assert path == tmp_path / "cache" / "blob-0000.bin"
  assert path.read_bytes() == BLOB
  assert server.requests == ["files/blob-0000.bin"]
  # Cached: checked again, not downloaded again.
  assert download.fetch_all([BLOB_FILE]) == [path]
  assert len(server.requests) == 1


def test_full_md5_checksums_are_checked_too(server):
  serve(server, "blob-0000.bin", BLOB)
  good = download.RemoteFile(BLOB_FILE.url, f"md5:{hashlib.md5(BLOB).hexdigest()}")
  assert download.fetch_all([good])[0].read_bytes() == BLOB
  wrong = download.RemoteFile(BLOB_FILE.url, "md5:" + "0" * 32)
  with pytest.raises(download.DownloadError, match="not the published one"):
    download.fetch_all([wrong])


def test_a_corrupt_download_is_refused_and_not_kept(server, tmp_path):
  serve(server, "blob-0000.bin", BLOB[::-1])
  with pytest.raises(download.DownloadError) as error:
    download.fetch_all([BLOB_FILE])
  message = errors.one_line(error.value)
  assert "\n" not in str(error.value)
  assert f"http://127.0.0.1:{server.server_port}/files/blob-0000.bin" in message
  assert "not the published one" in message
  assert f"put that file at {tmp_path / 'cache' / 'blob-0000.bin'}" in message
  assert cache_listing(tmp_path) == []


def test_an_interrupted_download_leaves_nothing(server, tmp_path):
  serve(server, "blob-0000.bin", BLOB)
  server.cut_short.add("files/blob-0000.bin")
  with pytest.raises(download.DownloadError, match="broke off before the end"):
    download.fetch_all([BLOB_FILE])
  assert server.requests == ["files/blob-0000.bin"]
  assert cache_listing(tmp_path) == []


def test_a_damaged_cached_file_is_downloaded_again(server, tmp_path):
  serve(server, "blob-0000.bin", BLOB)
  (tmp_path / "cache").mkdir()
  (tmp_path / "cache" / "blob-0000.bin").write_bytes(BLOB[:100])
  assert download.fetch_all([BLOB_FILE])[0].read_bytes() == BLOB
  assert server.requests == ["files/blob-0000.bin"]


def test_a_missing_file_and_an_unwritable_cache_are_named(server, tmp_path, monkeypatch):
  with pytest.raises(
    download.DownloadError, match=r"blob-0000.bin \(the server answered HTTP 404\)"
  ):
    download.fetch_all([BLOB_FILE])
  serve(server, "blob-0000.bin", BLOB)
  (tmp_path / "a_file").write_text("")
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "a_file" / "cache"))
  with pytest.raises(download.DownloadError, match="cannot write the cache folder"):
    download.fetch_all([BLOB_FILE])


def test_offline_names_every_missing_file_its_url_and_path(tmp_path, monkeypatch):
  port = unused_port()
  monkeypatch.setenv(download.URL_ENV, f"http://127.0.0.1:{port}")
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  files = [sources.CIFAR10_ARCHIVE, pretrained.TORCHVISION_WEIGHTS["alexnet"]]
  with pytest.raises(download.DownloadError) as error:
    download.fetch_all(files)
  message = str(error.value)
  assert "\n" not in message
  for name in ("cifar-10-python.tar.gz", "alexnet-owt-7be5be79.pth"):
    assert f"http://127.0.0.1:{port}/{name} (cannot connect to 127.0.0.1:{port})" in message
    assert f"put that file at {tmp_path / 'cache' / name}" in message
  assert cache_listing(tmp_path) == []


def test_published_urls_without_a_mirror(monkeypatch):
  monkeypatch.delenv(download.URL_ENV, raising=False)
  assert download.source_url(sources.CIFAR10_ARCHIVE) == (
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
  )
  monkeypatch.setenv(download.URL_ENV, "http://mirror.example/x/")
  assert download.source_url(sources.CIFAR10_ARCHIVE) == (
    "http://mirror.example/x/cifar-10-python.tar.gz"
  )


def test_the_weights_registry_checks_the_digits_torchvision_names_its_files_with():
  for backbone, remote in pretrained.TORCHVISION_WEIGHTS.items():
    assert remote.url.startswith("https://download.pytorch.org/models/")
    assert remote.name.startswith(backbone)
    algorithm, digits = remote.checksum.split(":")
    assert algorithm == "sha256" and len(digits) == 8
    assert remote.name.removesuffix(".pth").rsplit("-", 1)[1] == digits


def config_with(backbone, pretrained_backbone):
  config = default.base_config("cifar10")
  config.backbone, config.pretrained_backbone = backbone, pretrained_backbone
  return config


def test_what_pretrained_backbone_asks_for(tmp_path):
  alexnet = pretrained.TORCHVISION_WEIGHTS["alexnet"]
  assert pretrained.remote_files(config_with("alexnet", "torchvision")) == [alexnet]
  assert pretrained.remote_files(config_with("alexnet", "none")) == []
  assert pretrained.weights_path(config_with("alexnet", "none")) is None
  assert pretrained.weights_path(config_with("alexnet", "None")) is None
  assert pretrained.remote_files(config_with("alexnet", "TorchVision")) == [alexnet]
  assert pretrained.remote_files(config_with("alexnet", str(tmp_path / "w.pth"))) == []
  assert pretrained.weights_path(config_with("alexnet", "~/w.pth")) == str(
    pathlib.Path.home() / "w.pth"
  )
  assert pretrained.remote_files(config_with("small_cnn", None)) == []
  assert pretrained.weights_path(config_with("small_cnn", None)) is None
  with pytest.raises(errors.ConfigError, match="--config.pretrained_backbone=torchvision"):
    pretrained.remote_files(config_with("alexnet", None))
  with pytest.raises(errors.ConfigError, match="no weights for backbone 'small_cnn'"):
    pretrained.remote_files(config_with("small_cnn", "torchvision"))


def test_torchvision_weights_without_torch_are_refused_before_downloading(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "torch" else find_spec(name, *a)
  )
  with pytest.raises(errors.MissingDependencyError, match="needs PyTorch, which is not installed"):
    pretrained.remote_files(config_with("alexnet", "torchvision"))


# ---------------------------------------------------------------- CIFAR-10's archive


def write_cifar_archive(path, per_batch):
  """A CIFAR-10 python archive in the published format, `per_batch` random images per
  batch (every class in each); returns its images (n, 32, 32, 3) and class ids."""
  rng = np.random.default_rng(0)
  all_images, all_ids = [], []
  with tarfile.open(path, "w:gz") as tar:

    def add(name, obj):
      blob = pickle.dumps(obj, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))

    add("batches.meta", {b"label_names": [b"airplane"] * 10})
    for b, name in enumerate(sources.CIFAR10_BATCHES):
      images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
      ids = [(b + i) % 10 for i in range(per_batch)]
      rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
      add(name, {b"batch_label": name.encode(), b"labels": ids, b"data": rows})
      all_images.append(images)
      all_ids += ids
  return np.concatenate(all_images), np.array(all_ids)


def test_cifar10_source_reads_the_batches_train_then_test(tmp_path):
  images, ids = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", per_batch=4)
  source = sources.cifar10_source(tmp_path / "cifar-10-python.tar.gz")
  assert len(source) == 24 and source.num_classes == 10
  assert source.images.dtype == np.uint8 and source.images.shape == (24, 32, 32, 3)
  np.testing.assert_array_equal(source.images, images)
  np.testing.assert_array_equal(source.labels, np.eye(10, dtype=np.float32)[ids])
  # The test batch comes last: its first image, red channel, as stored (channel-major).
  with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
    test = pickle.load(tar.extractfile("cifar-10-batches-py/test_batch"), encoding="bytes")
  np.testing.assert_array_equal(source.image(20)[..., 0].ravel(), test[b"data"][0, :1024])


def test_cifar10_archive_without_a_batch_is_refused(tmp_path):
  with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
    info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
    tar.addfile(info, io.BytesIO(b""))
  with pytest.raises(errors.DataError, match="no data_batch_1, .* test_batch in it"):
    sources.cifar10_source(tmp_path / "a.tar.gz")


def test_cifar10_is_fetched_by_the_data_layer(server, tmp_path, monkeypatch):
  served = server.served / "files"
  served.mkdir()
  images, _ = write_cifar_archive(served / "cifar-10-python.tar.gz", per_batch=10)
  md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
  monkeypatch.setattr(
    sources, "CIFAR10_ARCHIVE", download.RemoteFile(sources.CIFAR10_ARCHIVE.url, f"md5:{md5}")
  )
  config = default_data_config("cifar10")
  config.query_per_class = 1
  data = build_dataset(config, str(tmp_path / "run"), seed=0)
  assert len(data.split.query) == 10 and len(data.split.database) == 50
  np.testing.assert_array_equal(data.source.images, images)
  assert cache_listing(tmp_path) == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------- train.py end to end

# Runs train.py as typed, after pointing the registry's checksums at the test's files.
TRAIN_WITH_CHECKSUMS = """
import runpy, sys
from schn_jax import download
from schn_jax.data import sources
from schn_jax.interop import pretrained
archive, weights = sys.argv.pop(1), sys.argv.pop(1)
sources.CIFAR10_ARCHIVE = download.RemoteFile(sources.CIFAR10_ARCHIVE.url, archive)
alexnet = pretrained.TORCHVISION_WEIGHTS['alexnet']
pretrained.TORCHVISION_WEIGHTS['alexnet'] = download.RemoteFile(alexnet.url, weights)
sys.argv[0] = 'train.py'
runpy.run_path('train.py', run_name='__main__')
"""

# Small enough for a CPU: 60 images, AlexNet at 64x64, one iteration of 20.
TINY = (
  "--config.data.query_per_class=1",
  "--config.data.image_size=64",
  "--config.data.test_resize=64",
  "--config.code_lengths=(12,)",
  "--config.variant=mmasia",
  "--config.sample_size=20",
  "--config.batch_size=10",
  "--config.max_iter=1",
  "--config.max_epoch=1",
  "--config.eval_iter=1",
)


@pytest.fixture(scope="module")
def fake_alexnet(tmp_path_factory):
  """A torchvision AlexNet state dict with random weights, saved by torch."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
  torch.save(torchvision.models.alexnet().state_dict(), path)
  return path


def run_train(env, checksums, workdir):
  return subprocess.run(
    [sys.executable, "-c", TRAIN_WITH_CHECKSUMS, *checksums]
    + ["--config=configs/cifar.py", f"--workdir={workdir}", *TINY],
    cwd=support.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_train_cifar_downloads_checks_and_trains(server, tmp_path, fake_alexnet, monkeypatch):
  served = server.served / "files"
  served.mkdir()
  write_cifar_archive(served / "cifar-10-python.tar.gz", per_batch=10)
  (served / "alexnet-owt-7be5be79.pth").symlink_to(fake_alexnet)
  md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
  checksums = (f"md5:{md5}", f"sha256:{sha256(fake_alexnet)[:8]}")
  env = dict(os.environ)

  # Offline first: one error line naming both files, nothing written anywhere.
  offline = dict(env, **{download.URL_ENV: f"http://127.0.0.1:{unused_port()}"})
  proc = run_train(offline, checksums, tmp_path / "run")
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, proc.stderr
  for name in ("cifar-10-python.tar.gz", "alexnet-owt-7be5be79.pth"):
    assert f"/{name} (cannot connect" in lines[0]
    assert f"put that file at {tmp_path / 'cache' / name}" in lines[0]
  assert not (tmp_path / "run").exists()
  assert cache_listing(tmp_path) == []

  proc = run_train(env, checksums, tmp_path / "run")
  assert proc.returncode == 0, proc.stderr
  assert sorted(server.requests) == [
    "files/alexnet-owt-7be5be79.pth",
    "files/cifar-10-python.tar.gz",
  ]
  assert cache_listing(tmp_path) == ["alexnet-owt-7be5be79.pth", "cifar-10-python.tar.gz"]
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["12"]["iterations"] == 1
  assert 0 < metrics["12"]["map"] <= 1
  # The backbone started from the served weights: after one short iteration at
  # rate 4e-5, conv1 is still theirs to within a few Adam steps.
  trained = inference.TrainedModel.from_workdir(tmp_path / "run").params
  kernel = trained["visual"]["backbone"]["features_0"]["kernel"]  # HWIO
  served_kernel = weights.read_arrays(fake_alexnet)[0]["features.0.weight"].transpose(2, 3, 1, 0)
  assert np.abs(served_kernel).mean() > 1e-2
  np.testing.assert_allclose(kernel, served_kernel, atol=1e-3)
