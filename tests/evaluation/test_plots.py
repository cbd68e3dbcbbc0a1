"""The evaluation's figures, rendered from small hand-made rows: Figure 5 as one line per
method, legends clear of the data, cluster maps that say what they show."""

import matplotlib
import numpy as np

from detr_jax.evaluation import plots

matplotlib.use("Agg", force=True)


def _rows():
    rows = [{"attention": "exact", "AP": 42.0, "gflops_total": 187.0, "ms_per_image": 9.0,
             "prototype_ratio": [1.0] * 3}]
    for L, ap, gflops in ((16, 35.0, 140.0), (32, 41.5, 160.0), (24, 40.0, 150.0)):
        rows.append({"attention": f"act:L={L},r=8", "AP": ap, "gflops_total": gflops,
                     "ms_per_image": gflops / 20, "prototype_ratio": [L / 64, L / 50, L / 40]})
    for C, ap, gflops in ((100, 37.0, 150.0), (50, 30.0, 140.0)):
        rows.append({"attention": f"kmeans:C={C}", "AP": ap, "gflops_total": gflops,
                     "ms_per_image": 8.0, "prototype_ratio": [C / 400] * 3})
    rows.append({"attention": "enact:sigma=3", "AP": 40.0, "gflops_total": 165.0,
                 "ms_per_image": 8.5, "prototype_ratio": [0.5] * 3})
    for L, ap, gflops in ((16, 37.0, 140.0), (32, 42.3, 160.0)):
        rows.append({"attention": f"act:L={L},r=8", "model": "MTKD", "AP": ap,
                     "gflops_total": gflops, "ms_per_image": 7.0, "prototype_ratio": [0.4] * 3})
    return rows


def _clear_of_data(fig, legend, axes):
    fig.canvas.draw()
    box = legend.get_window_extent()
    return all(not box.overlaps(ax.get_window_extent()) for ax in axes)


def test_sweep_of_reads_method_and_sweep_parameter():
    assert plots.sweep_of("act:L=24,r=8") == ("act", "L", "24", (("r", "8"),))
    assert plots.sweep_of("act")[:3] == ("act", "L", "32")  # the registry's default L
    assert plots.sweep_of("kmeans:C=50")[:3] == ("kmeans", "C", "50")
    assert plots.sweep_of("enact:sigma=2")[:3] == ("enact", "sigma", "2")
    assert plots.sweep_of("exact") == ("exact", None, None, ())


def test_ap_vs_gflops_is_one_line_per_method_with_exact_as_reference():
    rows = _rows()
    fig = plots.ap_vs_gflops_figure(rows)
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines()
              if not line.get_label().startswith("_")}
    methods = [k for k in curves if not k.startswith("exact")]
    assert sorted(methods) == ["ACT over L", "ACT over L [MTKD]", "ENACT over sigma",
                               "K-means over C"]
    act = curves["ACT over L"]  # the L sweep, joined in order of GFLOPs
    assert list(act.get_xdata()) == [140.0, 150.0, 160.0]
    assert list(act.get_ydata()) == [35.0, 40.0, 41.5]
    assert list(curves["ACT over L [MTKD]"].get_ydata()) == [37.0, 42.3]
    assert curves["ACT over L [MTKD]"].get_linestyle() != act.get_linestyle()
    assert list(curves["K-means over C"].get_xdata()) == [140.0, 150.0]
    exact = curves["exact (42.0 AP)"]
    assert exact.get_marker() == "*" and list(exact.get_xdata()) == [187.0]
    horizontal = [line for line in ax.get_lines() if line.get_label().startswith("_")
                  and len(set(np.asarray(line.get_ydata(), float))) == 1]
    assert [float(line.get_ydata()[0]) for line in horizontal] == [42.0]
    annotations = {t.get_text() for t in ax.texts}
    assert {"L=16", "L=24", "L=32", "C=50", "C=100", "sigma=3"} <= annotations
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 5
    assert _clear_of_data(fig, legend, [ax])
    matplotlib.pyplot.close(fig)


def test_ap_vs_time_without_flops_and_png_written(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "gflops_total"} for r in _rows()]
    fig = plots.ap_vs_gflops_figure(rows)
    assert "ms per image" in fig.axes[0].get_xlabel()
    matplotlib.pyplot.close(fig)
    path = plots.plot_ap_vs_gflops(_rows(), str(tmp_path / "ap.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_prototype_ratio_legend_does_not_cover_the_exact_line(tmp_path):
    rows = [r for r in _rows() if not r.get("model")]
    fig = plots.prototype_ratio_figure(rows)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == len(rows)
    exact = next(line for line in lines if line.get_label() == "exact")
    assert list(exact.get_ydata()) == [1.0] * 3 and exact.get_linestyle() == "--"
    assert _clear_of_data(fig, ax.get_legend(), [ax])
    matplotlib.pyplot.close(fig)
    assert plots.plot_prototype_ratio(rows, str(tmp_path / "ratio.png"))


def test_cluster_maps_label_each_panel_with_its_own_cluster_size(tmp_path):
    fh, fw, stride = 4, 5, 8
    image = np.full((fh * stride, fw * stride, 3), 128, np.uint8)
    layer0 = np.zeros((1, fh * fw), int)               # one cluster of all 20 tokens
    layer1 = np.arange(fh * fw).reshape(1, -1) % 4     # four clusters of 5 tokens
    layer2 = np.arange(fh * fw).reshape(1, -1)         # every token its own cluster
    ids = [layer0, None, layer1, layer2]               # layer 2 has no clusters: skipped
    tokens = [(0, 0), (3, 4)]
    fig = plots.cluster_maps_figure(image, (fh * stride, fw * stride), (fh, fw), stride, ids,
                                    tokens, head=0, title="t")
    axes = np.asarray(fig.axes).reshape(len(tokens), 3)
    assert [ax.get_title() for ax in axes[0]] == ["layer 1", "layer 3", "layer 4"]
    for row in axes:
        assert [ax.get_xlabel() for ax in row] == ["cluster: 20 of 20 tokens",
                                                   "cluster: 5 of 20 tokens",
                                                   "cluster: 1 of 20 tokens"]
    assert axes[1][0].get_ylabel() == "token (row 3, col 4)"
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0] == "chosen token" and "cluster" in labels[1] and len(labels) == 3
    assert _clear_of_data(fig, legend, axes.ravel())
    fig.canvas.draw()
    assert legend.get_window_extent().y1 <= min(ax.get_window_extent().y0 for ax in axes.ravel())
    matplotlib.pyplot.close(fig)
    path = plots.plot_cluster_maps(image, (fh * stride, fw * stride), (fh, fw), stride, ids,
                                   tokens, str(tmp_path / "maps.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
    assert plots.plot_cluster_maps(image, (32, 40), (fh, fw), stride, [None], tokens,
                                   str(tmp_path / "none.png")) is None
