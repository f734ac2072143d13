"""Downloads resume after a cut connection, never leave a file that looks complete, and refuse a wrong hash."""
import hashlib

import pytest

from snella_seg.utils.fetch import (MANIFEST_NAME, ChecksumError, DownloadInterrupted, fetch, read_manifest,
                                    torch_hub_hash)
from tests.helpers.file_server import serve_files

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several reads, so a cut keeps what came before it
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def test_a_download_lands_with_its_sha256_in_the_manifest(tmp_path):
    with serve_files({'/w.pth': PAYLOAD}) as server:
        path = fetch(f'{server.url}/w.pth', tmp_path / 'w.pth', f'sha256:{SHA256}', progress=False)

    assert path.read_bytes() == PAYLOAD
    assert read_manifest(tmp_path) == {'w.pth': SHA256}
    assert not (tmp_path / 'w.pth.part').exists()


def test_a_cut_download_leaves_only_a_partial_file_and_the_next_run_resumes_it(tmp_path):
    with serve_files({'/w.pth': PAYLOAD}) as server:
        server.cut_after['/w.pth'] = 600_000
        with pytest.raises(DownloadInterrupted, match='run the same command again to resume'):
            fetch(f'{server.url}/w.pth', tmp_path / 'w.pth', progress=False, retries=0)
        assert not (tmp_path / 'w.pth').exists()
        received = (tmp_path / 'w.pth.part').stat().st_size
        assert 0 < received <= 600_000

        fetch(f'{server.url}/w.pth', tmp_path / 'w.pth', progress=False, retries=0)

    assert (tmp_path / 'w.pth').read_bytes() == PAYLOAD
    assert server.requests == [('/w.pth', None), ('/w.pth', f'bytes={received}-')]


def test_a_retry_within_one_call_resumes_where_the_cut_left_off(tmp_path):
    with serve_files({'/w.pth': PAYLOAD}) as server:
        server.cut_after['/w.pth'] = 700_000
        fetch(f'{server.url}/w.pth', tmp_path / 'w.pth', f'sha256:{SHA256[:8]}', progress=False, retries=1)

    assert (tmp_path / 'w.pth').read_bytes() == PAYLOAD
    assert len(server.requests) == 2 and server.requests[1][1].startswith('bytes=')


def test_a_hash_mismatch_is_refused_and_the_partial_file_removed(tmp_path):
    with serve_files({'/w.pth': PAYLOAD}) as server:
        with pytest.raises(ChecksumError, match='expected 0000'):
            fetch(f'{server.url}/w.pth', tmp_path / 'w.pth', 'sha256:0000', progress=False, retries=0)

    assert list(tmp_path.iterdir()) == []


def test_a_file_already_there_is_checked_against_the_manifest_not_downloaded(tmp_path):
    (tmp_path / 'w.pth').write_bytes(b'changed since it was downloaded')
    (tmp_path / MANIFEST_NAME).write_text(f'{SHA256}  w.pth\n')

    with pytest.raises(ChecksumError, match='w.pth'):
        fetch('http://127.0.0.1:9/unused', tmp_path / 'w.pth', progress=False)


def test_a_file_put_in_place_by_hand_is_checked_and_recorded(tmp_path):
    (tmp_path / f'w-{SHA256[:8]}.pth').write_bytes(PAYLOAD)

    fetch('', tmp_path / f'w-{SHA256[:8]}.pth', torch_hub_hash(f'w-{SHA256[:8]}.pth'), progress=False)

    assert read_manifest(tmp_path) == {f'w-{SHA256[:8]}.pth': SHA256}


def test_a_partial_file_longer_than_the_servers_is_removed(tmp_path):
    (tmp_path / 'w.pth.part').write_bytes(PAYLOAD + b'extra')
    with serve_files({'/w.pth': PAYLOAD}) as server:
        with pytest.raises(Exception, match='does not match the file on the server'):
            fetch(f'{server.url}/w.pth', tmp_path / 'w.pth', progress=False, retries=0)
    assert not (tmp_path / 'w.pth.part').exists()


def test_torch_hub_names_carry_a_sha256_prefix():
    assert torch_hub_hash('dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth') == 'sha256:8aa4cbdd'
    assert torch_hub_hash('dinov2_vitl14_pretrain.pth') is None
