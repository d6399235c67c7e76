"""The original CVM-Net graph, built in TensorFlow (`tf.compat.v1`), for the import tests.

Run as a script in its own process (TensorFlow and torch are never loaded together):

    python tests/support/tf_cvm_graph.py SPEC.json

SPEC holds: arch ("cvm-net-i" | "cvm-net-ii"), width_div, clusters, out_dim, sat_size,
grd_size [h, w], ckpt (prefix to save to), pairs ([[ground image, satellite image], ...] used for
one Adam step), grd_images and sat_images (to describe), out_dir, seed. The script builds the
graph with the original's variable scopes and names (VGG_grd / VGG_sat conv1_1..conv5_3, SAME 3x3
convolutions with bias and ReLU, 2x2 max-pools, dropout after blocks 4-5; LOUPE NetVLAD without
gating or batch norm; CVM-Net-I: netvlad_grd / netvlad_sat and the shared dim_reduction/fc1 then
L2; CVM-Net-II: transformation_trans{,_shared} convs and the shared netvlad with hidden1_weights,
unnormalised), runs one Adam step of the original's soft-margin loss in the name scope `train`
with an unnamed integer step `Variable`, saves every global variable with a Saver, and writes
grd.npy / sat.npy: the graph's `grd_global` / `sat_global` (keep_prob 1) of the images, prepared
as the original's input_data.py does (cv2.imread -> BGR, INTER_AREA resize, Caffe means).

Initialisers differ from the original's where those would make every descriptor alike at a
random start (the FC's 0.1 bias; Xavier weights with Xavier biases through 13 layers; near-uniform
soft assignments around unit-norm centroids): He-normal convs with small biases, a zero-mean FC,
sharp assignments (std 30/sqrt(D)) and small centroids (std 0.01/sqrt(D)), so that different
images give clearly different descriptors. Names, shapes and the computation are the original's.

With "mode": "rewrite" the script instead copies the checkpoint `src` to `dst` with TensorFlow's
own SaveV2, dropping, adding or reshaping variables (`rewrite`), for the refusal tests.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1
MEANS_BGR = (103.939, 116.779, 123.6)
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def load(path: str, height: int, width: int) -> np.ndarray:
    img = cv2.imread(path)  # BGR uint8, as the original
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    img = img.astype(np.float32)
    for c in range(3):
        img[:, :, c] -= MEANS_BGR[c]
    return img


def conv(x, k: int, cin: int, cout: int, name: str, trainable: bool = True):
    with tf1.variable_scope(name):
        std = np.sqrt(2.0 / (k * k * cin))
        w = tf1.get_variable(
            "weights",
            [k, k, cin, cout],
            initializer=tf1.random_normal_initializer(0.0, std),
            trainable=trainable,
        )
        b = tf1.get_variable(
            "biases", [cout], initializer=tf1.random_normal_initializer(0.0, 0.01), trainable=trainable
        )
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w, strides=[1, 1, 1, 1], padding="SAME"), b))


def vgg(x, keep_prob, width_div: int, scope: str):
    with tf1.variable_scope(scope):
        cin = 3
        for b, (width, n) in enumerate(BLOCKS):
            for i in range(n):
                cout = width // width_div
                x = conv(x, 3, cin, cout, f"conv{b + 1}_{i + 1}", trainable=b >= 3)
                if b >= 3:
                    x = tf.nn.dropout(x, rate=1.0 - keep_prob)
                cin = cout
            if b < 4:
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
        return x


def netvlad(x, d: int, k: int, proj_dim: int | None):
    """LOUPE NetVLAD as the original's loupe.py: no gating, no batch norm, feature-major flatten."""
    n = int(x.shape[1]) * int(x.shape[2])
    x = tf.nn.l2_normalize(x, 3)
    flat = tf.reshape(x, [-1, d])
    # Sharp assignments and small centroids (the original: both 1/sqrt(D)), see the module docstring.
    std, cstd = 30.0 / np.sqrt(d), 0.01 / np.sqrt(d)
    cluster_weights = tf1.get_variable(
        "cluster_weights", [d, k], initializer=tf1.random_normal_initializer(0, std)
    )
    cluster_biases = tf1.get_variable(
        "cluster_biases", [k], initializer=tf1.random_normal_initializer(0, std)
    )
    act = tf.nn.softmax(tf.matmul(flat, cluster_weights) + cluster_biases)
    act = tf.reshape(act, [-1, n, k])
    a_sum = tf.reduce_sum(act, -2, keepdims=True)
    cluster_weights2 = tf1.get_variable(
        "cluster_weights2", [1, d, k], initializer=tf1.random_normal_initializer(0, cstd)
    )
    a = tf.multiply(a_sum, cluster_weights2)
    act = tf.transpose(act, perm=[0, 2, 1])
    vlad = tf.matmul(act, tf.reshape(flat, [-1, n, d]))
    vlad = tf.transpose(vlad, perm=[0, 2, 1])
    vlad = tf.subtract(vlad, a)
    vlad = tf.nn.l2_normalize(vlad, 1)
    vlad = tf.reshape(vlad, [-1, d * k])
    vlad = tf.nn.l2_normalize(vlad, 1)
    if proj_dim is not None:
        hidden1 = tf1.get_variable(
            "hidden1_weights", [d * k, proj_dim], initializer=tf1.random_normal_initializer(0, 1 / np.sqrt(k))
        )
        vlad = tf.matmul(vlad, hidden1)
    return vlad


def fc(x, cin: int, cout: int, name: str):
    with tf1.variable_scope(name):
        w = tf1.get_variable(
            "weights", [cin, cout], initializer=tf1.truncated_normal_initializer(stddev=1 / np.sqrt(cin))
        )
        b = tf1.get_variable("biases", [cout], initializer=tf1.random_normal_initializer(0, 0.001))
        return tf.nn.bias_add(tf.matmul(x, w), b)


def build(spec: dict, grd, sat, keep_prob):
    wd, k, out_dim = spec["width_div"], spec["clusters"], spec["out_dim"]
    d = 512 // wd
    g = vgg(grd, keep_prob, wd, "VGG_grd")
    s = vgg(sat, keep_prob, wd, "VGG_sat")
    if spec["arch"] == "cvm-net-i":
        with tf1.variable_scope("netvlad_grd"):
            g = netvlad(g, d, k, None)
        with tf1.variable_scope("netvlad_sat"):
            s = netvlad(s, d, k, None)
        with tf1.variable_scope("dim_reduction") as scope:
            g = fc(g, d * k, out_dim, "fc1")
            scope.reuse_variables()
            s = fc(s, d * k, out_dim, "fc1")
        return tf.nn.l2_normalize(g, 1), tf.nn.l2_normalize(s, 1)
    with tf1.variable_scope("transformation_trans"):
        s = tf.nn.dropout(conv(s, 1, d, d, "sat_trans_conv1"), rate=1.0 - keep_prob)
        g = tf.nn.dropout(conv(g, 1, d, d, "grd_trans_conv1"), rate=1.0 - keep_prob)
    with tf1.variable_scope("transformation_trans_shared") as scope:

        def shared(x):
            x = tf.nn.dropout(conv(x, 3, d, d, "trans_conv1"), rate=1.0 - keep_prob)
            return tf.nn.dropout(conv(x, 1, d, d, "trans_conv2"), rate=1.0 - keep_prob)

        s = shared(s)
        scope.reuse_variables()
        g = shared(g)
    with tf1.variable_scope("netvlad") as scope:
        s = netvlad(s, d, k, out_dim)
        scope.reuse_variables()
        g = netvlad(g, d, k, out_dim)
    return g, s  # not normalised, as the original


def loss_of(sat_global, grd_global, n: int):
    """The original's weighted soft-margin loss (alpha 10), with softplus for log(1 + exp)."""
    dist = 2 - 2 * tf.matmul(sat_global, grd_global, transpose_b=True)
    pos = tf.linalg.diag_part(dist)
    g2s = tf.reduce_sum(tf.nn.softplus(10.0 * (tf.expand_dims(pos, 0) - dist))) / (n * (n - 1))
    s2g = tf.reduce_sum(tf.nn.softplus(10.0 * (tf.expand_dims(pos, 1) - dist))) / (n * (n - 1))
    return (g2s + s2g) / 2.0


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    tf1.disable_eager_execution()
    tf1.set_random_seed(spec.get("seed", 0))
    gh, gw = spec["grd_size"]
    ss = spec["sat_size"]
    grd_x = tf1.placeholder(tf.float32, [None, gh, gw, 3], name="grd_x")
    sat_x = tf1.placeholder(tf.float32, [None, ss, ss, 3], name="sat_x")
    keep_prob = tf1.placeholder(tf.float32)
    grd_global, sat_global = build(spec, grd_x, sat_x, keep_prob)
    model_variables = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
    step = tf1.Variable(0, trainable=False)  # the original's unnamed global step
    with tf1.name_scope("train"):
        n = len(spec["pairs"])
        train_op = tf1.train.AdamOptimizer(spec.get("lr", 1e-4)).minimize(
            loss_of(sat_global, grd_global, n), global_step=step
        )
    saver = tf1.train.Saver(tf1.global_variables(), max_to_keep=None)
    with tf1.Session(config=tf1.ConfigProto(intra_op_parallelism_threads=os.cpu_count() or 1)) as sess:
        sess.run(tf1.global_variables_initializer())
        g_batch = np.stack([load(g, gh, gw) for g, _ in spec["pairs"]])
        s_batch = np.stack([load(s, ss, ss) for _, s in spec["pairs"]])
        sess.run(train_op, {grd_x: g_batch, sat_x: s_batch, keep_prob: 0.8})
        saver.save(sess, spec["ckpt"])
        out = spec["out_dir"]
        saved = dict(tf.train.list_variables(spec["ckpt"]))
        with open(os.path.join(out, "variables.json"), "w") as f:
            json.dump({"model": model_variables, "saved": saved}, f)
        for name, x, images, size in (
            ("grd", grd_x, spec["grd_images"], (gh, gw)),
            ("sat", sat_x, spec["sat_images"], (ss, ss)),
        ):
            tensor = grd_global if name == "grd" else sat_global
            rows = [
                sess.run(tensor, {x: load(p, *size)[None], keep_prob: 1.0})[0] for p in images
            ]  # one at a time: the other branch's placeholder is not needed
            np.save(os.path.join(out, f"{name}.npy"), np.stack(rows).astype(np.float32))


def rewrite(spec: dict) -> None:
    """Copy the checkpoint `src` to `dst` (TensorFlow's own SaveV2), without the variables in
    `drop`, with zero tensors `add` ({name: shape}) and with `reshape` ({name: shape}: zeros)."""
    reader = tf.train.load_checkpoint(spec["src"])
    tensors = {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(spec["src"])}
    for name in spec.get("drop", []):
        del tensors[name]
    for name, shape in {**spec.get("add", {}), **spec.get("reshape", {})}.items():
        tensors[name] = np.zeros(shape, np.float32)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=spec["dst"],
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec_arg = json.load(f)
    if spec_arg.get("mode") == "rewrite":
        rewrite(spec_arg)
    else:
        main(sys.argv[1])
