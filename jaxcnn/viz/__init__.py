"""Pictures of what a CNN learned and how it did: filters, activations, curves, errors, saliency.

Every plotting function returns a :class:`matplotlib.figure.Figure` (shown inline by a
notebook) and writes a PNG when given ``path=``; figures are drawn by Agg, never through
``pyplot``. :func:`write_all` writes all of them for a finished run (``jaxcnn viz``).

    from jaxcnn import viz
    viz.plot_filters(variables)                      # first convolution's kernels
    viz.plot_activations(model, variables, image)    # Zeiler & Fergus 2014
    viz.saliency(model, variables, images)           # Simonyan et al. 2014
    viz.write_all("runs/my-run")
"""
from jaxcnn.viz.activations import (Layer, activation_maps, first_conv_layer, list_layers,
                                    plot_activations)
from jaxcnn.viz.curves import plot_history
from jaxcnn.viz.filters import conv_kernels, plot_filters
from jaxcnn.viz.metrics import (confusion_matrix, most_confident_errors, per_class_accuracy,
                                plot_confusion, predict, worst_misclassified)
from jaxcnn.viz.run import FIGURES, write_all
from jaxcnn.viz.saliency import plot_saliency, saliency

__all__ = ["FIGURES", "Layer", "activation_maps", "confusion_matrix", "conv_kernels",
           "first_conv_layer", "list_layers", "most_confident_errors", "per_class_accuracy",
           "plot_activations", "plot_confusion", "plot_filters", "plot_history",
           "plot_saliency", "predict", "saliency", "worst_misclassified", "write_all"]
