"""The GPU check rehearsed on a bare machine: a fresh venv that holds only what a lent GPU machine's image holds,
plus the wheelhouse, no registry, runs ``tools/analysis/gpu_check.sh OUT --device cpu --tiny`` end to end.

The venv sees this environment's copies of the image's packages (the device tool's KINDS.md lists them; torch,
torchvision, numpy, OpenCV, PyYAML, ... but no OpenMMLab), so whatever the check needs beyond them has to come from
the wheelhouse: a wheel missing from tools/analysis/make_wheelhouse.sh fails here before it fails on a GPU.
About two minutes on two quiet cores.
"""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
import venv
from importlib import metadata

import pytest

from tests.helpers.paths import REPO

# The packages of the lent machine's image ('cuda'), as the device tool's KINDS.md listed them on 2026-11-17.
MACHINE_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
WHEELHOUSE = osp.join(REPO, 'wheelhouse')
PARTS = ('environment', 'selection', 'training', 'runner', 'sam')


def _normalized(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def _ensure_wheelhouse() -> str:
    """The repository's wheelhouse/, built once (and kept: it is ignored by git) when absent."""
    if not glob.glob(osp.join(WHEELHOUSE, '*.whl')):
        done = subprocess.run(['bash', 'tools/analysis/make_wheelhouse.sh', WHEELHOUSE], cwd=REPO,
                              capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
        if done.returncode != 0:
            pytest.skip(f'no wheelhouse/ and building it failed (is the package registry reachable?): '
                        f'{done.stderr.strip()[-500:]}')
    return WHEELHOUSE


def _bare_machine_python(root: str) -> str:
    """A venv without this environment's site-packages, seeing only the machine image's packages through links."""
    venv.create(osp.join(root, 'venv'), with_pip=False, symlinks=True)
    python = osp.join(root, 'venv', 'bin', 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    image = osp.join(root, 'machine_image')
    os.makedirs(image)
    for dist in metadata.distributions():
        if _normalized(dist.metadata['Name']) not in MACHINE_IMAGE_PACKAGES:
            continue
        tops = {path.parts[0] for path in dist.files or () if path.parts[0] != '..'}
        for top in tops:
            source = str(dist.locate_file(top))
            if osp.exists(source) and not osp.exists(osp.join(image, top)):
                os.symlink(source, osp.join(image, top))
    with open(osp.join(site, 'machine_image.pth'), 'w') as f:
        f.write(image + '\n')
    return python


@pytest.fixture(scope='module')
def check_output(tmp_path_factory):
    """The check's JSON files by part, and its last output line, from one run in the bare venv."""
    wheelhouse = _ensure_wheelhouse()
    root = str(tmp_path_factory.mktemp('bare_machine'))
    python = _bare_machine_python(root)
    out = osp.join(root, 'out')
    env = {key: value for key, value in os.environ.items() if not key.startswith(('PYTHON', 'PIP_', 'VIRTUAL_ENV'))}
    # the limits are sized for an H200: scaled up for a 2-core CPU that other processes share, they stay a safety net
    env.update(PYTHON=python, WHEELHOUSE=wheelhouse, OMP_NUM_THREADS='1', PIP_NO_INDEX='1',
               GPU_CHECK_TIME_SCALE=os.environ.get('GPU_CHECK_TIME_SCALE', '4'))
    done = subprocess.run(['bash', osp.join(REPO, 'tools', 'analysis', 'gpu_check.sh'), out, '--device', 'cpu',
                           '--tiny'], capture_output=True, text=True, env=env)
    results = {}
    for index, part in enumerate(PARTS, start=1):
        path = osp.join(out, f'{index}_{part}.json')
        if osp.isfile(path):
            with open(path) as f:
                results[part] = json.load(f)
    lines = done.stdout.strip().splitlines()
    return {'returncode': done.returncode, 'last_line': lines[-1] if lines else '', 'results': results,
            'log': (done.stdout + done.stderr)[-6000:]}


def test_every_part_passes_and_the_last_line_says_so(check_output):
    assert check_output['returncode'] == 0, check_output['log']
    assert check_output['last_line'].startswith(f'gpu_check: passed {" ".join(PARTS)}; failed -'), check_output['log']


def test_the_openmmlab_stack_comes_from_the_wheelhouse_not_this_environment(check_output):
    environment = check_output['results']['environment']
    assert environment['packages']['mmseg'] == '1.2.2'
    for name in ('mmengine', 'mmseg', 'mmcv', 'timm'):
        assert osp.basename(osp.dirname(environment['locations'][name])).startswith('gpu_check_site'), environment


def test_the_selection_matches_kthvalue_on_every_matrix(check_output):
    selection = check_output['results']['selection']
    assert selection['cases'] and not selection['mismatches']


def test_every_training_run_reports_time_memory_estimate_and_host_syncs(check_output):
    runs = check_output['results']['training']['runs']
    assert {(run['method'], run['precision']) for run in runs} == {
        (method, precision) for method in ('lora', 'snella', 'full') for precision in ('fp32', 'bf16')}
    for run in runs:
        assert run['step_seconds'] > 0 and run['estimated_peak_mb'] > 0, run
        assert run['host_syncs_per_step'] == sum(run['host_syncs_by_source'].values()), run


def test_the_runner_resumes_identically_and_tools_test_reports_miou(check_output):
    rounds = check_output['results']['runner']['rounds']
    assert [r['precision'] for r in rounds] == ['bf16']
    assert rounds[0]['resume']['identical'] and rounds[0]['resume']['tensors'] > 0
    assert 0 <= rounds[0]['miou'] <= 100


def test_sam_runs_lora_and_snella_in_the_time_left(check_output):
    runs = check_output['results']['sam']['runs']
    assert {run['method'] for run in runs} == {'lora', 'snella'} and all('error' not in run for run in runs)
