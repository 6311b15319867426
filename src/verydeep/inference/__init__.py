"""Inference engines above the model and its weights: PyTorch or OpenVINO behind one interface.

* :mod:`~verydeep.inference.engines` - ``--engine auto|torch|openvino``, the cache folder, a net
  readied for its engine, the settings of an inference loop;
* :mod:`~verydeep.inference.openvino_engine` - :class:`OpenVINONet`, the dense and descriptor views
  compiled by OpenVINO's CPU plugin (an optional extra);
* :mod:`~verydeep.inference.export` - ONNX, TorchScript and OpenVINO IR files of a net.

The engines convert what the net hands them (``model.dense_module``); they know no layer of it.
"""
