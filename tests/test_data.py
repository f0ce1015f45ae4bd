import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from n2n.data import DataError, cache_dir, load_dataset, load_raw


def _row_set(x: torch.Tensor) -> set:
    return {hash(r.numpy().tobytes()) for r in x.reshape(len(x), -1)}


@pytest.mark.parametrize("name,sizes,shape", [
    ("mnist1d", {"train": 7000, "val": 1500, "test": 1500}, (1, 40)),
    ("digits", {"train": 1257, "val": 269, "test": 271}, (1, 8, 8)),
])
def test_builtin_splits_sizes_disjoint_and_seeded(name, sizes, shape):
    ds = load_dataset(name)
    assert ds.sizes() == sizes
    assert ds.input_shape == shape and ds.num_classes == 10
    tr, va, te = _row_set(ds.x_train), _row_set(ds.x_val), _row_set(ds.x_test)
    # digits has a few exact duplicate images in the raw data; splits must still not share indices.
    overlap = len(tr & va) + len(tr & te) + len(va & te)
    assert overlap <= (0 if name == "mnist1d" else 10)
    again = load_dataset(name)
    assert torch.equal(ds.x_val, again.x_val) and torch.equal(ds.y_test, again.y_test)
    other = load_dataset(name, seed=1)
    assert not torch.equal(ds.y_val, other.y_val)
    # standardised with train statistics
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3
    # the rule the README gives for rebuilding it without n2n (helper-87: a deployer could not rescore an export)
    n = sum(sizes.values())
    perm = np.random.default_rng(0).permutation(n)
    cut = (int(0.7 * n), int(0.7 * n) + int(0.15 * n))
    assert [ds.index[p].tolist() for p in ("train", "val", "test")] == [a.tolist() for a in np.split(perm, cut)]
    y = load_raw(name)[1]
    assert np.array_equal(np.asarray(y)[perm[cut[0]:cut[1]]], ds.y_val.numpy())


def test_mnist1d_is_cached_on_disk_and_a_damaged_copy_is_made_again(tmp_path, monkeypatch):
    x, y = load_raw("mnist1d")[:2]
    (cached,) = (cache_dir() / "data").glob("mnist1d-*.npz")
    monkeypatch.setenv("N2N_CACHE", str(tmp_path))
    (tmp_path / "data").mkdir()
    # a copy cut short (a full disk, an interrupted rsync) used to stop every search with a zipfile traceback
    (tmp_path / "data" / cached.name).write_bytes(cached.read_bytes()[:5000])
    x2, y2 = load_raw("mnist1d")[:2]
    assert np.array_equal(x2, x) and np.array_equal(y2, y)
    with np.load(tmp_path / "data" / cached.name) as f:  # and the cache is whole again
        assert np.array_equal(f["x"], x) and np.array_equal(f["y"], y)


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3, 16)).astype(np.float32)
    y = rng.integers(0, 4, 100)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.sizes() == {"train": 70, "val": 15, "test": 15}
    assert ds.input_shape == (3, 16) and ds.num_classes == 4
    assert sorted(torch.cat([ds.y_train, ds.y_val, ds.y_test]).tolist()) == sorted(y.tolist())
    assert ds.unused_classes_warning() is None


def test_labels_that_skip_class_ids_are_said_not_renumbered(tmp_path):
    """Labels 1, 2, 3 (helper-11): a teacher made for them has an output 0 that no sample trains. n2n
    says so and keeps the ids, since renumbering would move every prediction the user reads."""
    rng = np.random.default_rng(0)
    y = np.array([1, 2, 3, 7] * 25)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(100, 1, 8)).astype(np.float32), y=y)
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert ds.num_classes == 8 and set(ds.y_train.tolist()) <= {1, 2, 3, 7}
    assert ds.unused_classes_warning() == (
        f"warning: npz:{tmp_path / 'd.npz'}: labels are class ids, and 4 of the ids 0..7 never appear (0, 4, 5, 6); "
        "a teacher trained here has an output for each id, trained by no sample. Number the classes 0..K-1 to avoid that")
    # helper-41: a split of the user's own where class 3 is only in the test split trained without a word
    x = rng.normal(size=(30, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "own.npz", x_train=x[:20], y_train=np.arange(20) % 3, x_val=x[20:25], y_val=np.arange(5) % 3,
             x_test=x[25:], y_test=np.array([0, 1, 2, 3, 3]))
    own = load_dataset(f"npz:{tmp_path / 'own.npz'}")
    assert own.unused_classes_warning() == (
        f"warning: npz:{tmp_path / 'own.npz'}: class 3 appears only in the validation or test split; no training "
        "sample teaches a teacher trained here, so every such sample is scored wrong")
    assert own.unused_classes_warning(training=False).endswith(  # a search: the teacher may know it (helper-42)
        "class 3 appears only in the validation or test split; students distil on the training split only, where no "
        "sample is of that class")
    own.labels = ["ant", "bee", "cat", "dog"]  # class names, where the data has them
    assert "class 3 (dog) appears only" in own.unused_classes_warning()


def test_npz_errors_name_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="expected a file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "a.npz", inputs=np.zeros((20, 4)), y=np.zeros(20, int))
    with pytest.raises(DataError, match="expected arrays 'x' and 'y' .*found \\['inputs', 'y'\\]"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "b.npz", x=np.zeros((20, 4)), y=np.zeros(19, int))
    with pytest.raises(DataError, match="20 samples and 19 labels"):
        load_dataset(f"npz:{tmp_path / 'b.npz'}")
    np.savez(tmp_path / "c.npz", x=np.zeros((20, 4)), y=np.zeros(20))
    with pytest.raises(DataError, match="integer labels"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")
    np.savez(tmp_path / "e.npz", x=np.zeros(20), y=np.zeros(20, int))
    with pytest.raises(DataError, match=r"expected 'x' with a feature axis, .*got shape \(20,\)"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")
    with pytest.raises(DataError, match=r"text:a.csv: raw arrays are for numeric data; .*load_dataset\('text:a.csv', "
                                        r"tokenizer=TEACHER_FOLDER\)"):  # helper-49: "unknown dataset"
        load_raw("text:a.csv")
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8), np.float32), y=np.zeros(0, int))  # helper-36: a traceback
    with pytest.raises(DataError, match=r"empty.npz: expected samples, found none \(x and y are empty\)$"):
        load_dataset(f"npz:{tmp_path / 'empty.npz'}")
    # splits of another sample shape (helper-27: said to need pickle)
    np.savez(tmp_path / "f.npz", **{f"{a}_{s}": np.zeros((5, 1, 8, 7 if s == "train" else 8)) if a == "x" else
                                    np.zeros(5, int) for a in "xy" for s in ("train", "val", "test")})
    with pytest.raises(DataError, match=r"f.npz: expected one sample shape in x_train, x_val and x_test, found "
                                        r"x_train \[1, 8, 7\], x_val \[1, 8, 8\], x_test \[1, 8, 8\]$"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            a = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.input_shape == (3, 6, 6) and ds.num_classes == 2
    # class id i is the i-th sub-folder in sorted order, recorded with the split (helper-27: said nowhere)
    assert ds.labels == ["cat", "dog"] and ds.split["labels"] == ["cat", "dog"]
    assert sum(ds.sizes().values()) == 20
    assert torch.bincount(torch.cat([ds.y_train, ds.y_val, ds.y_test])).tolist() == [10, 10]
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match="expected every image to be \\(3, 6, 6\\)"):
        load_dataset(f"folder:{tmp_path}")


def test_data_larger_than_memory_allows_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """helper-76: a 1 MB npz decompressed to 5.9 GB (still reading after 5 minutes), and a 3.7 MB
    folder of blank 9000x9000 PNGs asked 15 GB as float32. The npz headers and the images' sizes are
    read first; past a quarter of the machine's memory (here made 1 MiB) the data is refused."""
    from PIL import Image

    import n2n.data as data_mod

    monkeypatch.setattr(data_mod, "memory_for_data", lambda: 1 << 20)
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((300, 1, 1000), np.float32), y=np.zeros(300, np.int64))
    assert (tmp_path / "big.npz").stat().st_size < 20_000  # 1.2 MB of zeros
    with pytest.raises(DataError, match=rf"^npz dataset {tmp_path / 'big.npz'}: its arrays \(the largest x \(300, 1, "
                                        r"1000\) float32\) hold 1.1 MiB once read, more than a quarter of the memory this "
                                        r"machine \(or its container\) has \(4.0 MiB\)"):
        load_raw(f"npz:{tmp_path / 'big.npz'}")
    np.savez_compressed(tmp_path / "small.npz", x=np.zeros((300, 1, 100), np.float32), y=np.arange(300) % 2)
    assert load_raw(f"npz:{tmp_path / 'small.npz'}")[0].shape == (300, 1, 100)  # 0.1 MB: read
    # as held: integer inputs as int64 token ids (helper-79: uint8 was counted a byte each, 8x under)
    np.savez_compressed(tmp_path / "ids.npz", x=np.zeros((300, 1000), np.uint8), y=np.zeros(300, np.int64))
    with pytest.raises(DataError, match=r"the largest x \(300, 1000\) uint8\) hold 2.3 MiB once read"):
        load_raw(f"npz:{tmp_path / 'ids.npz'}")
    # an array stored without the .npy suffix, which np.load reads all the same (helper-79: skipped by the check)
    import zipfile

    with zipfile.ZipFile(tmp_path / "bare.npz", "w") as z, z.open("x", "w") as x:
        np.lib.format.write_array(x, np.zeros((300, 1, 1000), np.float32))
    with zipfile.ZipFile(tmp_path / "bare.npz", "a") as z, z.open("y.npy", "w") as y:
        np.lib.format.write_array(y, np.zeros(300, np.int64))
    with pytest.raises(DataError, match=r"the largest x \(300, 1, 1000\) float32\) hold 1.1 MiB once read"):
        load_raw(f"npz:{tmp_path / 'bare.npz'}")
    # and, beside a small x.npy, the bare x is the one np.load reads and the check counts (helper-80)
    with zipfile.ZipFile(tmp_path / "bare.npz", "a") as z, z.open("x.npy", "w") as x:
        np.lib.format.write_array(x, np.zeros((300, 1, 4), np.float32))
    with pytest.raises(DataError, match=r"the largest x \(300, 1, 1000\) float32\) hold 1.1 MiB once read"):
        load_raw(f"npz:{tmp_path / 'bare.npz'}")
    for cls in ("a", "b"):  # grey images, counted as one channel (helper-79: three)
        (tmp_path / "img" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "img" / cls / "0.png")  # 0.36 MB each
    assert load_raw(f"folder:{tmp_path / 'img'}")[0].shape == (2, 1, 300, 300)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "img" / "b" / "1.png")
    with pytest.raises(DataError, match=rf"^image folder {tmp_path / 'img'}: its images up to "
                                        rf"{tmp_path / 'img' / 'b' / '1.png'} hold 1.0 MiB once read"):
        load_raw(f"folder:{tmp_path / 'img'}")


def test_palette_and_alpha_images_keep_their_colours(tmp_path):
    """helper-36: colour palette images (GIFs, 8-bit PNGs) were read as grey without a word."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)  # (palette entries, RGB)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            idx = rng.integers(0, 256, (4, 4), dtype=np.uint8)
            img = Image.fromarray(idx, mode="P")
            img.putpalette(colours.ravel().tolist())
            img.save(tmp_path / cls / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (4, 4, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / cls / "rgba.png")
    x, y, _ = load_raw(f"folder:{tmp_path}")
    assert x.shape == (12, 3, 4, 4)
    # the palette image's pixels are its palette's colours, the RGBA one's its colours without alpha
    assert np.array_equal(x[0], colours[idx_of(tmp_path / "a" / "0.png")].transpose(2, 0, 1))
    rgba = np.asarray(Image.open(tmp_path / "a" / "rgba.png"))  # (H, W, RGBA)
    assert np.array_equal(x[5], rgba[..., :3].transpose(2, 0, 1))  # a/rgba.png sorts after a/4.png

    grey = tmp_path / "grey"
    for cls in ("a", "b"):
        (grey / cls).mkdir(parents=True)
        for i in range(3):
            idx = rng.integers(0, 256, (4, 4), dtype=np.uint8)
            img = Image.fromarray(idx, mode="P")
            img.putpalette(np.repeat(np.arange(256, dtype=np.uint8)[::-1], 3).tolist())  # greys, reversed
            img.save(grey / cls / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (4, 4, 2), dtype=np.uint8), mode="LA").save(grey / cls / "la.png")
    x, _, _ = load_raw(f"folder:{grey}")
    assert x.shape == (8, 1, 4, 4)  # a grey palette and grey-with-alpha stay one channel
    assert np.array_equal(x[0, 0], 255 - idx_of(grey / "a" / "0.png"))
    # helper-42: only the colours an image uses count (a grey image's palette may hold unused colours), and
    # a palette with transparency reads without Pillow's warning
    idx = rng.integers(0, 4, (4, 4), dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 80, 80, 80, 160, 160, 160, 255, 255, 255, 255, 0, 0])  # red, unused
    img.save(grey / "a" / "unused.png", transparency=b"\x80\xff")  # partly transparent: bytes, as pngquant writes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _, _ = load_raw(f"folder:{grey}")
    assert x.shape == (9, 1, 4, 4) and np.array_equal(x[4, 0], np.array([0, 80, 160, 255])[idx])  # a/unused.png
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(grey / "b" / "rgb.png")
    with pytest.raises(DataError, match=r"expected every image to be \(1, 4, 4\) \(C, H, W; C 1 for grey, 3 for "
                                        r"colour\), .*rgb.png is \(3, 4, 4\)"):
        load_dataset(f"folder:{grey}")


def test_a_folder_recorded_before_colour_palettes_is_read_as_it_was(tmp_path):
    """helper-42: reading colour palette images in colour changed the inputs of a folder a teacher had
    been trained on, so its fingerprint, and every run of it was refused as if the data had changed."""
    from PIL import Image

    from n2n.data import load_split

    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            img = Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), mode="P")
            img.putpalette(rng.integers(0, 256, 768).tolist())
            img.save(tmp_path / cls / f"{i}.png")
    name = f"folder:{tmp_path}"
    now = load_dataset(name)
    assert now.input_shape == (3, 4, 4) and now.split["images"] == 2
    then = load_dataset(name, images=1)  # as n2n read it before, recorded without "images"
    record = {k: v for k, v in then.split.items() if k != "images"}
    assert then.input_shape == (1, 4, 4) and record["fingerprint"] != now.split["fingerprint"]
    again = load_split(name, record)
    assert again.input_shape == (1, 4, 4) and again.split["fingerprint"] == record["fingerprint"]
    assert again.split["images"] == 1  # so a run of that teacher resumes the same way
    assert load_split(name, again.split).split["fingerprint"] == record["fingerprint"]
    with pytest.raises(DataError, match=r"expected the split record's \"images\" to be 1 or 2 \(how images are read\), "
                                        r"found 7"):
        load_split(name, {**record, "images": 7})


def idx_of(path):
    from PIL import Image

    return np.asarray(Image.open(path))  # a palette image's indices, as saved


def test_inputs_that_would_poison_a_search_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    y = np.arange(40) % 4
    x[7, 3], x[9, 0] = np.nan, np.inf  # one NaN turns every standardised feature into NaN
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    with pytest.raises(DataError, match="expected finite features, found NaN or inf in 2 samples \\(the first at index 7\\)"):
        load_dataset(f"npz:{tmp_path / 'nan.npz'}")
    np.savez(tmp_path / "one.npz", x=np.ones((40, 8), np.float32), y=np.full(40, 3))
    with pytest.raises(DataError, match="expected at least 2 classes, every label is \\[3\\]"):
        load_dataset(f"npz:{tmp_path / 'one.npz'}")
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="text.npz: expected a .npz archive \\(numpy.savez\\), the file starts with b'x,y"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    np.savez(tmp_path / "obj.npz", x=np.array([[1.0], "a"] * 20, dtype=object), y=y)
    with pytest.raises(DataError, match="obj.npz: expected numeric arrays, found one that needs pickle"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")


def test_a_corrupt_image_is_named(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    good = (tmp_path / "b" / "0.png").read_bytes()
    (tmp_path / "b" / "3.png").write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(DataError, match="cannot read .*b/3.png as an image"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "b" / "3.png").write_bytes(good)
    os.mkfifo(tmp_path / "b" / "zz.png")  # helper-28: reading it blocked forever
    with pytest.raises(DataError, match="expected image files, .*b/zz.png is not a regular file"):
        load_dataset(f"folder:{tmp_path}")


def test_data_that_would_be_silently_misread_is_refused(tmp_path):
    """helper-22: each of these trained a teacher (or died) instead of saying what was wrong."""
    from PIL import Image

    from n2n.data import _label_ids, read_text

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    for name, labels in (("big", (y * 2**40).astype(np.uint64)), ("wrap", y.astype(np.uint64) + np.uint64(2**63))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=labels)  # a 2**40-way output layer took the machine's memory
        with pytest.raises(DataError, match=rf"{name}.npz: expected class ids 0..K-1, found the id \d+ among 300 "
                                            r"samples \(2 distinct\)"):
            load_dataset(f"npz:{tmp_path / name}.npz")
    for top in (2**40, 2**64):  # the same in a text file (helper-23: 2**64 raised an OverflowError traceback)
        (tmp_path / "big.jsonl").write_text("".join(f'{{"text": "t{i}", "label": {top if i == 5 else i % 2}}}\n'
                                                    for i in range(30)))
        with pytest.raises(DataError, match=rf"big.jsonl: expected class ids 0..K-1, found the id {top} among 30 samples"):
            _label_ids(tmp_path / "big.jsonl", read_text(tmp_path / "big.jsonl")[1])
    np.savez(tmp_path / "complex.npz", x=x + 1j * x, y=y)  # the imaginary part was dropped with a warning
    with pytest.raises(DataError, match=r"complex.npz: expected real-valued 'x' .*got dtype complex"):
        load_dataset(f"npz:{tmp_path / 'complex.npz'}")
    # a JSONL split on all rows but one: the file's split was dropped for a seeded one, test rows trained on
    rows = [f'{{"text": "t{i}", "label": {i % 2}, "split": "{("train", "val", "test")[i % 3]}"}}' for i in range(30)]
    rows[3] = '{"text": "t3", "label": 1}'
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl: expected 'split' in every row once any row has one; row 4 has "
                                        r"\['label', 'text'\]"):
        read_text(tmp_path / "t.jsonl")
    # image folders: 16-bit images were clipped to 255 (every pixel the same); hidden folders became classes
    root = tmp_path / "img"
    for cls, base in (("a", 1000), ("b", 3000)):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((4, 4), base + i, np.uint16)).save(root / cls / f"{i}.png")
    with pytest.raises(DataError, match=r"expected 8-bit images \(pixel values 0..255\), .*0.png is I;16"):
        load_dataset(f"folder:{root}")
    for cls in ("a", "b"):
        for i in range(6):
            Image.fromarray(np.full((4, 4), 40 * i + (cls == "b"), np.uint8)).save(root / cls / f"{i}.png")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata beside an image: not one
    assert load_dataset(f"folder:{root}").num_classes == 2
    (root / "c").mkdir()
    with pytest.raises(DataError, match=rf"expected images in every class folder, {root / 'c'} has none"):
        load_dataset(f"folder:{root}")


def test_integer_features_for_a_non_transformer_teacher_are_refused(tmp_path):
    from n2n.teachers import TeacherRecipe, teacher_arch

    x = np.random.default_rng(0).integers(0, 9, (60, 8))
    np.savez(tmp_path / "ints.npz", x=x, y=np.arange(60) % 3)
    ds = load_dataset(f"npz:{tmp_path / 'ints.npz'}")
    with pytest.raises(DataError, match=r"integer 'x' is read as token ids, which only a transformer teacher "
                                        r"\(--hf\) takes; for --arch mlp save x as floats"):
        teacher_arch(TeacherRecipe(dataset=f"npz:{tmp_path / 'ints.npz'}", arch="mlp", hidden=[8]), ds)


def test_what_is_found_where_a_file_was_expected_is_said(tmp_path):
    """helper-68: a folder, a device and nothing were all "found none"."""
    from n2n.data import found_at

    (tmp_path / "f").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert [found_at(p) for p in (tmp_path / "nope", tmp_path, tmp_path / "f", tmp_path / "gone", Path("/dev/null"))] == [
        "nothing", "a folder", "a file", "a link to nothing", "no plain file (a device, FIFO or socket)"]

