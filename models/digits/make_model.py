"""Reproduce fleetmesh's embedded default model: a quantized 8x8 digits classifier.

Writes, next to this script:
  digits.onnx      the model tract runs (uint8 logits out, integer arithmetic only)
  digits_test.bin  the held-out test set with onnxruntime's logits for each sample

Run:  python3 -m venv /tmp/v && /tmp/v/bin/pip install -r requirements.txt && /tmp/v/bin/python make_model.py

Why the graph looks the way it does (docs/DECISIONS.md has the long form):
* An MLP (64 hidden, relu) on pixels/16, trained on a 75/25 stratified split, random_state 0.
* Both biases are folded into the weight matrices by appending a constant-1 column to the
  activations. After static quantization (QOperator, MatMul only) every layer is a
  QLinearMatMul and the graph output is the *integer* (int8) logits of the last one: integer
  arithmetic gives bit-identical results on every SIMD path, where float adds (FMA or not)
  and softmax do not. The label is argmax of those logits, lowest index winning ties.
* graph.value_info is dropped so tract can load the model with a fixed batch size of 1.

digits_test.bin layout: magic b"FMDIGIT1", u32 LE count, then per sample
  64 bytes of pixels (0..=16), 1 byte label, 10 bytes of onnxruntime's int8 logits.
"""
import os
import struct

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))


def build_float_model(w1, b1, w2, b2, path):
    w1f = np.vstack([w1, b1[None, :]]).astype(np.float32)  # 65 x 64
    w2f = np.vstack([w2, b2[None, :]]).astype(np.float32)  # 65 x 10
    inits = [
        numpy_helper.from_array(w1f, "W1"),
        numpy_helper.from_array(w2f, "W2"),
        numpy_helper.from_array(np.ones((1, 1), np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Concat", ["x", "one"], ["x1"], axis=1),
        helper.make_node("MatMul", ["x1", "W1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h1"]),
        helper.make_node("Concat", ["h1", "one"], ["h2"], axis=1),
        helper.make_node("MatMul", ["h2", "W2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fleetmesh-digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


class Calibration(CalibrationDataReader):
    def __init__(self, xs):
        self.it = iter([{"x": xs[i : i + 1]} for i in range(len(xs))])

    def get_next(self):
        return next(self.it, None)


def integer_output(path_in, path_out):
    """Drop the final DequantizeLinear so the graph returns the integer (int8) logits."""
    model = onnx.load(path_in)
    g = model.graph
    last = [n for n in g.node if n.output[0] == "logits"]
    assert len(last) == 1 and last[0].op_type == "DequantizeLinear", last
    q_name, zero_point = last[0].input[0], last[0].input[2]
    elem_type = next(t.data_type for t in g.initializer if t.name == zero_point)
    g.node.remove(last[0])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(q_name, elem_type, [1, 10]))
    del g.value_info[:]
    for n in g.node:
        assert n.domain in ("", "ai.onnx"), f"non-standard op {n.domain}:{n.op_type}"
    onnx.checker.check_model(model)
    onnx.save(model, path_out)


def main():
    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = digits.target
    xtr, xte, ytr, yte, _, pte = train_test_split(
        x, y, digits.data.astype(np.uint8), test_size=0.25, stratify=y, random_state=0
    )
    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", random_state=0, max_iter=1000)
    clf.fit(xtr, ytr)
    print(f"float model: {(clf.predict(xte) == yte).sum()}/{len(yte)}")

    tmp_f, tmp_q = "/tmp/fleetmesh-digits-float.onnx", "/tmp/fleetmesh-digits-q.onnx"
    build_float_model(clf.coefs_[0], clf.intercepts_[0], clf.coefs_[1], clf.intercepts_[1], tmp_f)
    quantize_static(tmp_f, tmp_q, Calibration(xtr), quant_format=QuantFormat.QOperator,
                    op_types_to_quantize=["MatMul"])
    out = os.path.join(HERE, "digits.onnx")
    integer_output(tmp_q, out)

    sess = ort.InferenceSession(out)
    logits = np.stack([sess.run(None, {"x": xte[i : i + 1]})[0][0] for i in range(len(xte))])
    pred = logits.argmax(axis=1)  # numpy argmax: lowest index wins ties, as fleetmesh does
    print(f"quantized model: {(pred == yte).sum()}/{len(yte)}, {os.path.getsize(out)} bytes")
    print("ops:", [n.op_type for n in onnx.load(out).graph.node])

    with open(os.path.join(HERE, "digits_test.bin"), "wb") as f:
        f.write(b"FMDIGIT1" + struct.pack("<I", len(yte)))
        for px, label, lg in zip(pte, yte, logits):
            f.write(bytes(px) + bytes([int(label)]) + lg.astype(np.int8).tobytes())


if __name__ == "__main__":
    main()
