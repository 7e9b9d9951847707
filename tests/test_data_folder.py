"""load_folder: the user's own images and labels, matched by file stem."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from cte_kit.data.folder import load_folder

#: Real annotated subsets beside the repository (absent on most machines: those tests skip).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _labels(shape=(32, 40)):
    labels = np.zeros(shape, np.uint16)
    labels[4:12, 5:15] = 1
    labels[20:28, 20:35] = 2
    return labels


@pytest.fixture
def pair(tmp_path):
    """images/ and labels/ with a 16-bit tif, an RGBA png and a jpg, labels as tif and png."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    tifffile.imwrite(images / "img10.tif", np.full((32, 40), 1000, np.uint16))
    iio.imwrite(images / "img2.png", np.full((32, 40, 4), 200, np.uint8))
    iio.imwrite(images / "img3.jpg", np.full((32, 40, 3), 90, np.uint8))
    tifffile.imwrite(labels / "img10.tif", _labels())
    iio.imwrite(labels / "img2.png", _labels().astype(np.uint8))
    tifffile.imwrite(labels / "img3.tif", _labels() > 0)
    return images, labels


def test_reads_images_and_matches_labels_by_stem(pair):
    images, labels = pair
    data = load_folder(images, labels, progress=False)
    assert data.names == ["img2", "img3", "img10"]  # natural order
    assert [p.name for p in data.image_paths] == ["img2.png", "img3.jpg", "img10.tif"]
    assert [p.name for p in data.label_paths] == ["img2.png", "img3.tif", "img10.tif"]
    assert data.images[0].shape == (32, 40, 3)  # alpha dropped
    assert data.images[2].dtype == np.uint16
    assert [lab.dtype for lab in data.labels] == [np.uint8, np.int64, np.uint16]  # bool labels become int64
    assert all(np.array_equal(lab > 0, _labels() > 0) for lab in data.labels)


def test_images_only_and_pattern(pair):
    images, _ = pair
    data = load_folder(images, pattern="*.tif", progress=False)
    assert data.names == ["img10"] and data.labels is None and data.label_paths is None


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="images folder .*nowhere does not exist"):
        load_folder(tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images \(.tif, .tiff, .png"):
        load_folder(tmp_path)


def test_images_without_labels_are_listed(pair):
    images, labels = pair
    (labels / "img3.tif").unlink()
    tifffile.imwrite(images / "extra.tif", np.zeros((32, 40), np.uint8))
    with pytest.raises(ValueError, match="labels missing for stems: extra, img3"):
        load_folder(images, labels, progress=False)


def test_labels_without_images_are_ignored_with_a_warning(pair):
    images, labels = pair
    tifffile.imwrite(labels / "orphan.tif", _labels())
    with pytest.warns(UserWarning, match="1 label file.*orphan"):
        data = load_folder(images, labels, progress=False)
    assert "orphan" not in data.names


@pytest.mark.parametrize("fname, cut", [("img10.tif", 8), ("img10.tif", 0.5), ("img2.png", 0.5), ("img3.jpg", 4)])
def test_corrupt_or_truncated_file_is_named(pair, fname, cut):
    images, labels = pair
    data = (images / fname).read_bytes()
    (images / fname).write_bytes(data[: cut if isinstance(cut, int) else int(len(data) * cut)])
    with pytest.raises(ValueError, match=f"cannot read .*{fname}"):
        load_folder(images, labels, progress=False)


def test_label_shape_mismatch_is_named(pair):
    images, labels = pair
    tifffile.imwrite(labels / "img10.tif", _labels((16, 16)))
    with pytest.raises(ValueError, match=r"img10.tif: label shape \(16, 16\) does not match image shape \(32, 40\)"):
        load_folder(images, labels, progress=False)


def test_two_files_with_one_stem(pair):
    images, _ = pair
    tifffile.imwrite(images / "img2.tif", np.zeros((32, 40), np.uint8))
    with pytest.raises(ValueError, match="share the stem 'img2'"):
        load_folder(images, progress=False)


def test_3d_stack_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="stack.tif: expected a 2D image"):
        load_folder(tmp_path, progress=False)


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data subsets not found at {SHARED_DATA}")
@pytest.mark.parametrize("name, count, image_shape, label_kind", [
    ("dsb2018_fluo_256", 334, (256, 256), "instance"),
    ("vnc_mito", 20, (1024, 1024), "semantic"),
    ("isbi2012_membrane", 30, (512, 512), "semantic"),
    ("dsb2018_histo", 107, None, "instance"),
])
def test_reads_the_shared_real_subsets(name, count, image_shape, label_kind):
    folder = SHARED_DATA / name
    data = load_folder(folder / "images", folder / "labels", progress=False)
    assert len(data.images) == len(data.labels) == len(data.names) == count
    for image, labels in zip(data.images, data.labels):
        assert labels.shape == image.shape[:2]
        if image_shape is None:  # colour histology, HxWx3
            assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8
        else:
            assert image.shape == image_shape
    if label_kind == "instance":
        assert all(lab.dtype == np.uint16 for lab in data.labels)
        assert max(int(lab.max()) for lab in data.labels) > 1
    else:
        assert all(lab.dtype == np.uint8 and lab.max() <= 1 for lab in data.labels)
