"""The network: shapes, code bit order, encode, checkpoint round trip and errors."""

import faiss
import numpy as np
import pytest
import torch

from hashindex import HashindexError, load_model
from hashindex.checkpoint import atomic_torch_save, build_meta, read_checkpoint
from hashindex.devices import cgroup_headroom, cpu_bf16_is_fast, resolve_device, uses_bf16
from hashindex.model import NINHash, pack_codes, unpack_codes


@pytest.mark.parametrize("bits", [12, 16, 24, 32, 48, 64])
def test_forward_shapes(bits):
    net = NINHash(bits, 10).eval()
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    logits, latent, feature = net(x)
    assert logits.shape == (5, 10) and latent.shape == (5, bits) and feature.shape == (5, 192)
    assert float(latent.detach().min()) >= 0 and float(latent.detach().max()) <= 1


def test_greyscale_and_other_sizes():
    net = NINHash(24, 3, channels=1).eval()
    logits, latent, feature = net(torch.randint(0, 256, (2, 1, 48, 40), dtype=torch.uint8))
    assert latent.shape == (2, 24) and feature.shape == (2, 192)


@pytest.mark.parametrize("bits", [3, 10, 0])
def test_bits_must_be_multiple_of_4(bits):
    with pytest.raises(HashindexError, match=f"bits={bits}: expected a multiple of 4"):
        NINHash(bits, 10)


@pytest.mark.parametrize("bits", [12, 48, 64])
def test_bit_order_matches_faiss(bits):
    rng = np.random.default_rng(bits)
    latent = rng.random((50, bits), dtype=np.float32)
    codes = pack_codes(latent)
    assert codes.shape == (50, (bits + 7) // 8) and codes.dtype == np.uint8
    assert np.array_equal(unpack_codes(codes, bits), (latent > 0.5).astype(np.uint8))
    if bits % 8 == 0:  # faiss.real_to_binary needs whole bytes
        ref = np.zeros((50, bits // 8), np.uint8)
        centred = np.ascontiguousarray(latent - 0.5)  # keep a reference: swig_ptr does not
        faiss.real_to_binary(50 * bits, faiss.swig_ptr(centred), faiss.swig_ptr(ref))
        assert np.array_equal(codes, ref)
    # Hamming distance from faiss equals the number of differing thresholded bits
    if bits % 8 == 0:
        index = faiss.IndexBinaryFlat(bits)
        index.add(codes)
        dist, nn = index.search(codes[:5], 50)
        bits01 = latent > 0.5
        for q in range(5):
            expect = (bits01[q] != bits01[nn[q]]).sum(axis=1)
            assert np.array_equal(dist[q], expect)


def test_encode_real_model(tiny_model):
    from hashindex.data import open_source
    from tests.conftest import CIFAR_TEST

    model = load_model(tiny_model)
    src = open_source(CIFAR_TEST).subset(100)
    images = np.stack([src.read_array(i, model.input_size, 3) for i in range(100)])
    codes, feats = model.encode(images)
    assert codes.shape == (100, 6) and codes.dtype == np.uint8
    assert feats.shape == (100, 192) and feats.dtype == np.float32
    latent, feature, _ = model.forward_numpy(images)
    assert np.array_equal(codes, pack_codes(latent))
    assert len({c.tobytes() for c in codes}) > 10  # codes are not all alike
    # batch size does not change the codes
    codes_b, _ = model.encode(images, batch_size=7)
    assert (codes_b != codes).sum() <= 2  # a bf16 trunk (AVX-512 CPUs): at most a stray bit near 0.5
    codes_pil, _ = model.encode_images([src.read(i) for i in range(100)])
    assert (codes_pil != codes).sum() <= 2


def test_checkpoint_round_trip(tmp_path):
    net = NINHash(32, 4, mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.3])
    meta = build_meta(net, class_names=list("abcd"), input_size=32, train_data="x", epochs=1,
                      epochs_planned=1, accuracy=0.5, map=0.4, history=[], train_args={})
    path = tmp_path / "m.pt"
    atomic_torch_save(meta, path)
    model = load_model(path, bf16=False)
    assert model.model_id == meta["model_id"] and model.bits == 32 and model.class_names == list("abcd")
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    net.eval()
    with torch.no_grad():
        expect = net(x)[1].numpy()
    assert np.allclose(model.forward_numpy(x)[0], expect, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


def test_model_id_depends_on_weights(tmp_path):
    a, b = NINHash(48, 10), NINHash(48, 10)
    assert build_meta(a)["model_id"] != build_meta(b)["model_id"]
    assert build_meta(a)["model_id"] == build_meta(a)["model_id"]


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(HashindexError, match=r"notes.pt: not a hashindex checkpoint \(not a file torch.save writes\)$"):
        read_checkpoint(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(HashindexError, match="not a hashindex checkpoint"):
        read_checkpoint(other)
    with pytest.raises(HashindexError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pt")
    short = tmp_path / "short.pt"  # a real checkpoint, copied only in part
    atomic_torch_save(build_meta(NINHash(12, 10)), tmp_path / "whole.pt")
    short.write_bytes((tmp_path / "whole.pt").read_bytes()[:100_000])
    with pytest.raises(HashindexError, match=r"short.pt: not a hashindex checkpoint \(the file ends early: a copy "
                                             r"cut short\?\)$"):
        read_checkpoint(short)


def test_unknown_arch_version_and_tampering(tmp_path):
    meta = build_meta(NINHash(12, 2), class_names=["a", "b"], input_size=32)
    path = tmp_path / "m.pt"
    torch.save({**meta, "arch_version": 99}, path)
    with pytest.raises(HashindexError, match="v99 is not supported"):
        read_checkpoint(path)
    tampered = dict(meta)
    tampered["state_dict"] = {k: v.clone() for k, v in meta["state_dict"].items()}
    tampered["state_dict"]["latent.bias"] += 1
    torch.save(tampered, path)
    with pytest.raises(HashindexError, match="corrupt"):
        read_checkpoint(path)


def test_encode_takes_images_as_users_hold_them(tiny_model, tmp_path):
    """PIL images, HWC / HW arrays, NHWC / NCHW batches and torch tensors give the same codes, and an image of
    another size is resized exactly as extraction does (codes equal the extracted ones)."""
    from PIL import Image

    from hashindex import extract
    from hashindex.data import to_array
    from hashindex.store import ShardSet

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]  # not 32 x 32
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(tmp_path / "imgs" / "a" / f"{i}.png")
    extract(str(tiny_model), str(tmp_path / "imgs"), tmp_path / "s", workers=0, progress=False, log=lambda s: None)
    stored = ShardSet(tmp_path / "s").load(("codes", "features"))
    model = load_model(str(tiny_model))
    pil = [Image.fromarray(p) for p in pixels]
    codes, feats = model.encode(pil)
    assert np.array_equal(codes, stored["codes"])
    assert np.allclose(feats, stored["features"].astype(np.float32), atol=2e-2)
    nchw = np.stack([to_array(im, model.input_size, 3) for im in pil])  # the net's input (16 px for tiny_model)
    for form in (pixels, nchw, torch.from_numpy(nchw), nchw.transpose(0, 2, 3, 1)):
        assert np.array_equal(model.encode(form)[0], codes), type(form)
    assert np.array_equal(model.encode(pixels[1])[0], codes[1:2])  # one HWC image
    assert np.array_equal(model.encode(pil[2])[0], codes[2:3])  # one PIL image
    grey = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    assert np.array_equal(model.encode(grey)[0], model.encode(Image.fromarray(grey))[0])
    with pytest.raises(ValueError, match="expected uint8"):
        model.encode(nchw.astype(np.float32))


def test_test_flip_averages_the_mirror_image_and_changes_the_id():
    """With test_flip the eval-mode feature is the mean of the trunk over the image and its mirror image
    (computed directly here); training is unchanged, and the model id differs from the plain model's."""
    from hashindex.checkpoint import compute_model_id

    torch.manual_seed(0)
    plain = NINHash(16, 3).eval()
    flip = NINHash(16, 3, test_flip=True).eval()
    flip.load_state_dict(plain.state_dict())
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expect = 0.5 * (plain(x)[2] + plain(x.flip(3))[2])
        logits, latent, feature = flip(x)
    assert torch.allclose(feature, expect, atol=1e-5)
    assert torch.allclose(latent, torch.sigmoid(plain.latent(expect)), atol=1e-5)
    assert not torch.allclose(feature, plain(x)[2], atol=1e-3)
    # a symmetric image gives what the plain model gives
    sym = torch.cat([x[..., :16], x[..., :16].flip(3)], dim=3)
    with torch.no_grad():
        assert torch.allclose(flip(sym)[2], plain(sym)[2], atol=1e-4)
    flip.train(), plain.train()
    torch.manual_seed(1)
    a = flip(x)[2]
    torch.manual_seed(1)
    assert torch.equal(a, plain(x)[2])  # training sees one view
    sd = plain.state_dict()
    assert build_meta(plain)["model_id"] == compute_model_id(sd, 16)  # ids of plain models unchanged
    assert build_meta(flip)["model_id"] == compute_model_id(sd, 16, True) != compute_model_id(sd, 16)
    assert build_meta(flip)["test_flip"] is True


def test_test_flip_is_checked_with_the_id(tmp_path):
    meta = build_meta(NINHash(12, 2), class_names=["a", "b"], input_size=32)
    path = tmp_path / "m.pt"
    torch.save({**meta, "test_flip": True}, path)  # switched on without a new id
    with pytest.raises(HashindexError, match="corrupt"):
        read_checkpoint(path)
    torch.save({**meta, "test_flip": "yes"}, path)
    with pytest.raises(HashindexError, match="test_flip is 'yes', expected true or false"):
        read_checkpoint(path)


def test_device_names(monkeypatch):
    """--device: cpu, cuda, cuda:N (N among this machine's devices) or auto; other torch device types (mps, meta)
    and devices past the last are one-line errors, not a traceback when the net first moves there."""
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("mps", "meta", "gpu", "cuda:x", ""):
        with pytest.raises(HashindexError, match=f"^device={name}: expected cpu, cuda, cuda:N or auto$"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 2 GPUs, as torch sees it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(HashindexError, match=r"^device=cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1$"):
        resolve_device("cuda:2")


def test_cgroup_headroom_v1_and_v2(tmp_path):
    """A container's memory limits, cgroup v2 or v1, less their usage, the inactive page cache counted as free (a
    v1 usage holds the cache): the least over the process's own cgroup (named in /proc/self/cgroup) and the ones
    above it, a limit on a parent binding too; no limit ("max", v1's 2^63 - 4096) or no cgroup files: None."""
    def cgroup(folder, limit, usage, stat="", v1=False):
        folder.mkdir(parents=True, exist_ok=True)
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes") if v1 else ("memory.max", "memory.current")
        (folder / names[0]).write_text(f"{limit}\n")
        (folder / names[1]).write_text(f"{usage}\n")
        if stat:
            (folder / "memory.stat").write_text(stat)

    v2, own = tmp_path / "v2", tmp_path / "self-cgroup"
    own.write_text("0::/system.slice/job.service\n")
    cgroup(v2, "max", 9_000_000_000)  # the root: no limit
    cgroup(v2 / "system.slice", 8_000_000_000, 5_000_000_000, "anon 3000000000\ninactive_file 1000000000\n")
    cgroup(v2 / "system.slice" / "job.service", "max", 4_000_000_000)
    assert cgroup_headroom(v2, own) == 8_000_000_000 - 5_000_000_000 + 1_000_000_000  # the parent's limit binds
    cgroup(v2 / "system.slice" / "job.service", 6_000_000_000, 4_000_000_000)  # a tighter one of its own
    assert cgroup_headroom(v2, own) == 2_000_000_000
    cgroup(v2 / "system.slice" / "job.service", "max", 4_000_000_000)
    cgroup(v2 / "system.slice", "max", 5_000_000_000)
    assert cgroup_headroom(v2, own) is None
    v1 = tmp_path / "v1"
    own.write_text("5:cpu,cpuacct:/x\n4:memory:/process_api/abc\n0::/\n")
    cgroup(v1 / "memory", 9223372036854771712, 15_000_000_000, v1=True)  # v1's "no limit"
    cgroup(v1 / "memory" / "process_api" / "abc", 4_000_000_000, 3_500_000_000, v1=True)
    assert cgroup_headroom(v1, own) == 500_000_000  # no memory.stat: nothing counted as cache
    (v1 / "memory" / "process_api" / "abc" / "memory.stat").write_text("cache 9\ninactive_file 7\n"
                                                                      "total_inactive_file 2000000000\n")
    assert cgroup_headroom(v1, own) == 2_500_000_000
    own.write_text("4:memory:/\n")  # a container that sees its own cgroup as the root
    assert cgroup_headroom(v1, own) is None
    assert cgroup_headroom(tmp_path / "none", tmp_path / "no-such-file") is None


def test_bf16_by_default_only_where_it_is_faster(monkeypatch, tiny_model):
    """bf16 autocast: forced on or off by bf16=True/False on any CPU; by default only on AVX-512 CPUs
    (on AVX2 it measured 9x slower than float32), and the loaded model says which it runs."""
    cpu = torch.device("cpu")
    for capability, fast in (("AVX512", True), ("AVX2", False), ("DEFAULT", False), ("SVE256", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert cpu_bf16_is_fast() is fast and uses_bf16(cpu, None) is fast
        assert uses_bf16(cpu, True) and not uses_bf16(cpu, False)
        assert load_model(tiny_model).precision == ("bfloat16" if fast else "float32")
        assert load_model(tiny_model, bf16=True).precision == "bfloat16"
        assert load_model(tiny_model, bf16=False).precision == "float32"


def test_a_jpeg_file_gives_one_code_on_every_path(tiny_model, tmp_path):
    """A photo-sized JPEG is decoded at reduced scale (DCT scaling), which changes its pixels: extraction,
    `encode` of its path or bytes and the service's upload decoder read it the same way, so they give one code
    (the service once decoded at twice extraction's scale, and a re-uploaded photo missed its own code)."""
    from PIL import Image

    from hashindex import extract
    from hashindex.data import open_source
    from hashindex.data.images import net_array, to_array
    from hashindex.errors import HashindexError
    from hashindex.service.params import upload_array
    from hashindex.store import ShardSet

    rng = np.random.default_rng(5)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(3):  # smooth colour fields with noise: photo-like JPEGs, 640 x 480
        base = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((80, 80, 1)))
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / "a" / f"{i}.jpg", quality=90)
    extract(str(tiny_model), str(tmp_path / "imgs"), tmp_path / "s", workers=0, progress=False, log=lambda s: None)
    stored = ShardSet(tmp_path / "s").load(("codes", "paths"))
    files = [tmp_path / "imgs" / p for p in stored["paths"]]
    model = load_model(str(tiny_model))
    size, ch = model.input_size, model.channels
    src = open_source(str(tmp_path / "imgs"))
    for i, f in enumerate(files):
        data = f.read_bytes()
        extracted = src.read_array(src.paths.index(stored["paths"][i]), size, ch)
        assert np.array_equal(upload_array(data, size, ch), extracted)
        assert np.array_equal(net_array(data, size, ch), upload_array(data, size, ch))
        assert not np.array_equal(to_array(Image.open(f), size, ch), net_array(data, size, ch))  # full scale differs
    assert np.array_equal(model.encode(files)[0], stored["codes"])
    assert np.array_equal(model.encode([str(f) for f in files])[0], stored["codes"])
    assert np.array_equal(model.encode([f.read_bytes() for f in files])[0], stored["codes"])
    assert np.array_equal(model.encode(str(files[1]))[0], stored["codes"][1:2])
    with pytest.raises(HashindexError, match=r"missing: .*nope\.jpg"):
        model.encode([files[0], tmp_path / "nope.jpg"])
    with pytest.raises(HashindexError, match="not-an-image"):
        model.encode(b"not an image")


def _trained_looking(net: NINHash) -> NINHash:
    """Batch norms with statistics and affines of a trained net (a fresh one's are 0/1: folding them is trivial)."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g))
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return net


def test_folded_batch_norm_gives_the_trunk_s_outputs_and_follows_its_weights():
    """Inference runs the trunk with batch norm folded into the convs (`fold_batch_norm`): the same outputs as
    the trunk computed layer by layer (float32), folded anew after the weights change, never saved; training
    and gradients run the trunk itself."""
    from hashindex.model import fold_batch_norm

    torch.manual_seed(0)
    net = _trained_looking(NINHash(16, 3)).eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    inputs = net.normalize(x)
    with torch.no_grad():
        expect = net.trunk(inputs)  # the trunk as trained, BatchNorm layers and all
        folded = net.running_trunk()
        assert folded is not net.trunk and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded)
        assert len(folded) == len(net.trunk)  # positions kept: mid_end still splits it after block 2
        feature, mid = net.embed(x, mid=True)
        assert torch.allclose(feature, expect, atol=1e-4)
        assert torch.allclose(mid, net.trunk[:net.mid_end](inputs).mean((2, 3)), atol=1e-4)
        assert net.running_trunk() is folded  # kept while the weights stay
        net.trunk[1].running_var.mul_(4)  # a changed statistic (as load_state_dict or an update would)
        assert net.running_trunk() is not folded
        assert torch.allclose(net.embed(x)[0], net.trunk(inputs), atol=1e-4)
        assert not torch.allclose(net.embed(x)[0], expect, atol=1e-3)
    assert net.running_trunk() is net.trunk  # gradients wanted: the trunk itself
    with torch.no_grad():
        assert net.train().running_trunk() is net.trunk  # training: batch statistics, the trunk itself
    assert not any("fold" in k for k in net.state_dict())
    assert all(not p.requires_grad for p in fold_batch_norm(net.eval().trunk).parameters())
    with torch.inference_mode():  # a net made under inference_mode has no version counters: folded each pass
        made = _trained_looking(NINHash(16, 3)).eval()
        assert torch.allclose(made.embed(x)[0], made.trunk(made.normalize(x)), atol=1e-4)


def test_encoding_takes_smaller_batches_where_memory_is_short_with_the_same_outputs(tiny_model, monkeypatch):
    """A batch of large images that would take more than half the free memory is encoded in smaller ones (the
    OOM killer ends a process that asks for more, or another process on the machine); the outputs are the same."""
    from hashindex import model as model_module
    from hashindex.model import activation_bytes, fitting_batch

    cpu = torch.device("cpu")
    per_image = activation_bytes(224, training=False, bf16=True)
    assert per_image == 800 * 224 * 224
    assert activation_bytes(224, training=True, bf16=False, width=2) == 7000 * 224**2 * 2
    monkeypatch.setattr(model_module, "free_memory", lambda device: 10 * per_image)
    assert fitting_batch(256, per_image, cpu) == 5 and fitting_batch(3, per_image, cpu) == 3
    monkeypatch.setattr(model_module, "free_memory", lambda device: 0)
    assert fitting_batch(256, per_image, cpu) == 1
    monkeypatch.setattr(model_module, "free_memory", lambda device: None)  # unknown: as asked
    assert fitting_batch(256, per_image, cpu) == 256

    model = load_model(tiny_model, bf16=False)
    images = np.random.default_rng(0).integers(0, 256, (40, 3, model.input_size, model.input_size), np.uint8)
    whole = model.encode_fields(images)
    sizes = []
    real = model_module.HashModel._forward_arrays
    monkeypatch.setattr(model_module.HashModel, "_forward_arrays",
                        lambda self, x, mid: sizes.append(len(x)) or real(self, x, mid))
    per = activation_bytes(model.input_size, training=False, bf16=False)
    monkeypatch.setattr(model_module, "free_memory", lambda device: 2 * 7 * per)  # half of it: 7 images
    parts = model.encode_fields(images)
    assert sizes == [7, 7, 7, 7, 7, 5]
    for name in ("codes", "features", "mid_features", "input_digests"):
        assert np.allclose(parts[name], whole[name], atol=1e-5), name
