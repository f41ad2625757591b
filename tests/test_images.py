import numpy as np
import pytest
from conftest import make_config, write_image
from PIL import Image

from pipeline.data import images, sources
from pipeline.data.images import (
    ArraySource,
    CachedImages,
    FileSource,
    LazyImages,
    MemoryImages,
    decode,
    open_images,
    uniform_side,
)
from pipeline.errors import PipelineError


def test_files_decode_once_into_a_memory_mapped_cache(image_csv_dir, tmp_path):
    source = sources.read(make_config({"layout": "image_csv", "dir": str(image_csv_dir)})).train.images
    images = open_images(source, tmp_path / "cache")
    assert isinstance(images, CachedImages) and isinstance(images.pixels, np.memmap)
    for i, path in enumerate(source.paths):
        np.testing.assert_array_equal(images[i], decode(path, 3))
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1
    reopened = open_images(source, tmp_path / "cache")
    assert reopened.folder == images.folder  # same content, same cache: nothing decoded again


def test_cache_is_keyed_by_content(image_csv_dir, tmp_path, rng):
    cfg = make_config({"layout": "image_csv", "dir": str(image_csv_dir)})
    first = open_images(sources.read(cfg).train.images, tmp_path / "cache")
    write_image(image_csv_dir / "train" / "img00.jpg", rng)  # same name, new pixels
    second = open_images(sources.read(cfg).train.images, tmp_path / "cache")
    assert second.folder != first.folder
    assert not np.array_equal(second[0], first[0])


def test_varied_sizes_and_grayscale(tmp_path, rng):
    paths = []
    for i, size in enumerate([(5, 7), (9, 4)]):
        paths.append(tmp_path / f"{i}.png")
        write_image(paths[-1], rng, size)
    images = open_images(FileSource(tuple(paths), channels=1), tmp_path / "cache")
    assert images[0].shape == (5, 7, 1) and images[1].shape == (9, 4, 1)


def test_array_source_cache(tmp_path, rng):
    array = rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)
    images = open_images(ArraySource(array, "abc123"), tmp_path)
    np.testing.assert_array_equal(np.stack([images[i] for i in range(3)]), array)


def test_over_the_limit_decodes_lazily(image_csv_dir, tmp_path):
    source = sources.read(make_config({"layout": "image_csv", "dir": str(image_csv_dir)})).train.images
    assert isinstance(open_images(source, tmp_path / "cache", "auto", limit_gb=1e-9), LazyImages)
    assert isinstance(open_images(source, tmp_path / "cache", "never"), LazyImages)
    assert not (tmp_path / "cache").exists()


def test_unreadable_image_names_the_file(image_csv_dir, tmp_path):
    broken = image_csv_dir / "train" / "img01.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated: the header still reads
    source = sources.read(make_config({"layout": "image_csv", "dir": str(image_csv_dir)})).train.images
    with pytest.raises(PipelineError, match="img01.png cannot be decoded"):
        open_images(source, tmp_path / "cache", "always")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written is left


def test_missing_image_file(tmp_path):
    with pytest.raises(PipelineError, match="nothing.png does not exist"):
        decode(tmp_path / "nothing.png", 3)


def test_uniform_side(tmp_path, rng):
    same = open_images(ArraySource(rng.integers(0, 256, (3, 5, 7, 1), dtype=np.uint8), "s"), tmp_path)
    assert uniform_side(same) == 7
    mixed = MemoryImages([np.zeros((4, 4, 1), np.uint8), np.zeros((6, 4, 1), np.uint8)])
    assert uniform_side(mixed) is None and uniform_side(LazyImages(FileSource((), 1))) is None


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_by_their_depth_not_clipped(tmp_path, suffix, capsys):
    images._say_once.cache_clear()  # said once per process
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(np.array([[0, 32768], [65535, 257]], dtype=np.uint16)).save(path)
    assert decode(path, 1)[..., 0].tolist() == [[0, 128], [255, 1]]
    assert decode(path, 3)[0, 1].tolist() == [128, 128, 128]
    assert "16-bit grey images are scaled to 8 bits" in capsys.readouterr().out


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour picture (noise would not survive a downscale to compare against)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 6, 3)
    channels = [np.sin(6 * x + 4 * y + p) for p in phase]
    return (127.5 + 127 * np.stack(channels, axis=-1)).astype(np.uint8)


def test_files_are_cached_at_the_working_side_with_their_original_sizes(tmp_path, rng, capsys):
    paths = []
    for i, (height, width) in enumerate([(60, 80), (90, 45), (20, 30)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(photo(rng, height, width)).save(paths[-1])
    source = FileSource(tuple(paths), 3)
    images = open_images(source, tmp_path / "cache", side=30)
    assert [images[i].shape for i in range(3)] == [(30, 40, 3), (60, 30, 3), (20, 30, 3)]  # never scaled up
    assert images.original_sizes.tolist() == [[60, 80], [90, 45], [20, 30]]
    assert images.side == 30 and "cached with shorter side at most 30 px" in capsys.readouterr().out
    assert open_images(source, tmp_path / "cache", side=24).folder == images.folder  # a larger cache serves

    larger = open_images(source, tmp_path / "cache", side=45)
    assert "holds images at 30 px (shorter side); 45 px is needed now" in capsys.readouterr().out
    assert larger[1].shape == (90, 45, 3) and not images.folder.exists()  # the smaller one is gone
    assert open_images(source, tmp_path / "cache", side=None)[0].shape == (60, 80, 3)


def test_a_cache_that_scaled_nothing_serves_every_side(tmp_path, rng):
    path = tmp_path / "small.png"
    Image.fromarray(photo(rng, 20, 30)).save(path)
    images = open_images(FileSource((path,), 3), tmp_path / "cache", side=96)
    assert images.side is None
    assert open_images(FileSource((path,), 3), tmp_path / "cache", side=None).folder == images.folder


def test_a_jpeg_decodes_at_reduced_scale_like_a_full_decode_resized(tmp_path, rng):
    path = tmp_path / "big.jpg"
    Image.fromarray(photo(rng, 600, 800)).save(path, quality=95)
    reduced = decode(path, 3, side=100).astype(float)
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB").resize((133, 100), Image.Resampling.BILINEAR), dtype=float)
    assert reduced.shape == (100, 133, 3)
    assert np.abs(reduced - expected).mean() < 2.0  # grey levels: DCT scaling then a smaller resize
    assert decode(path, 1, side=100).shape == (100, 133, 1)


def test_a_truncated_jpeg_is_caught_at_reduced_scale_too(tmp_path, rng):
    path = tmp_path / "cut.jpg"
    Image.fromarray(photo(rng, 400, 400)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(PipelineError, match="cut.jpg cannot be decoded: image file is truncated"):
        open_images(FileSource((path,), 3), tmp_path / "cache", "always", side=50)
    assert not any((tmp_path / "cache").iterdir())


def test_lazy_images_decode_at_the_working_side(tmp_path, rng):
    path = tmp_path / "big.jpg"
    Image.fromarray(photo(rng, 300, 200)).save(path)
    lazy = open_images(FileSource((path,), 3), tmp_path / "cache", "never", side=50)
    assert isinstance(lazy, LazyImages) and lazy[0].shape == (75, 50, 3)
    assert lazy.original_sizes.tolist() == [[300, 200]]


def test_webp_and_16_bit_tiff_decode(tmp_path, rng):
    picture = photo(rng, 12, 16)
    Image.fromarray(picture).save(tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(decode(tmp_path / "a.webp", 3), picture)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "white.tiff")
    assert decode(tmp_path / "white.tiff", 1).min() == 255
