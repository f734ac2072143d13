"""SNELLA's fused kernels compile for an H100 on a machine without a GPU, with their registers and spills read."""
import json
import os
import subprocess
import sys

import pytest

import compile_fused_kernels

triton = pytest.importorskip('triton')

PTXAS = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')


@pytest.mark.skipif(not os.path.isfile(PTXAS), reason='this triton ships no ptxas')
def test_every_kernel_of_a_layer_step_compiles_for_sm90_without_a_gpu_and_none_spills():
    """In a fresh process (the stand-in driver stays Triton's active one for the compiled kernels only), at the shipped
    rank 32: unrolled rank loops once took every register and spilled (255 registers, up to 256 bytes of stack)."""
    code = '''
import json, compile_fused_kernels
from triton.runtime import driver
before = driver._active
rows = compile_fused_kernels.compile_fused_kernels(
    90, rank=32, variants=(('snella', 3, 0.7, 'magnitude'), ('snell', 1, 0.0, 'binary')))
print(json.dumps({'rows': rows, 'restored': driver._active is before}))
'''
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=900,
                          env={**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [
                              os.path.dirname(compile_fused_kernels.__file__), os.environ.get('PYTHONPATH')]))})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = result['rows']
    assert result['restored']
    assert {row['kernel'] for row in rows} == {'build_kernel', 'grad_kernel', 'column_grad_kernel'}
    assert all(row['cubin_bytes'] > 0 for row in rows)
    assert {variant for row in rows for variant in row['variants']} == {
        'snella split=3 sparsity=0.7 magnitude', 'snell split=1 sparsity=0.0 binary'}
    usages = [(row['kernel'], row['variants'][0], row['resources']) for row in rows if row['resources'] is not None]
    assert all(0 < usage['REG'] < 255 and usage['STACK'] == 0 for _, _, usage in usages), usages
    table = compile_fused_kernels.format_table(rows)
    assert table.count('\n') == len(rows) + 1 and '| grad_kernel |' in table
