"""The subset of Caffe's `caffe.proto` schema the reader needs, built in code (no Caffe, no protoc).

Field numbers, types and defaults follow BVLC Caffe's `src/caffe/proto/caffe.proto`, so both the
binary `.caffemodel` and the text `.prototxt` formats parse. Messages and fields the builder does
not use are left out: binary parsing keeps them as unknown fields, text parsing skips them
(`parse_text(..., allow_unknown_field=True)`). Fields that appear in nearly every real prototxt
(fillers, `param { lr_mult }`, `include { phase }`, data-layer settings) are declared so that they
parse without relying on that leniency.

The classes live in a private descriptor pool, so they never clash with a `caffe_pb2` module that
some other package may have registered.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

_F = descriptor_pb2.FieldDescriptorProto
_LABELS = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED}
_SCALARS = {
    "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64,
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}
PACKAGE = "persistent_caffe"

# Top-level enums.
_ENUMS = {"Phase": ("TRAIN", "TEST")}

_ENGINE = ("DEFAULT", "CAFFE", "CUDNN")

# The fields caffe.proto declares [packed = true] (proto2 packs nothing by default).
_PACKED = {("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "diff"),
           ("BlobProto", "double_data"), ("BlobProto", "double_diff")}

# message -> (nested enums {name: values as names in order 0.. or (name, number) pairs}, fields).
# A field is (label, type, name, number[, default]); `type` is a scalar, a message, an enum
# (top-level or nested in this message), or "Msg.Enum" for an enum nested elsewhere.
_MESSAGES: dict[str, tuple[dict, list[tuple]]] = {
    "BlobShape": ({}, [("repeated", "int64", "dim", 1)]),
    "BlobProto": ({}, [
        ("optional", "BlobShape", "shape", 7),
        ("repeated", "float", "data", 5),
        ("repeated", "float", "diff", 6),
        ("repeated", "double", "double_data", 8),
        ("repeated", "double", "double_diff", 9),
        ("optional", "int32", "num", 1, "0"),
        ("optional", "int32", "channels", 2, "0"),
        ("optional", "int32", "height", 3, "0"),
        ("optional", "int32", "width", 4, "0"),
    ]),
    "BlobProtoVector": ({}, [("repeated", "BlobProto", "blobs", 1)]),
    "FillerParameter": ({"VarianceNorm": ("FAN_IN", "FAN_OUT", "AVERAGE")}, [
        ("optional", "string", "type", 1, "constant"),
        ("optional", "float", "value", 2, "0"),
        ("optional", "float", "min", 3, "0"),
        ("optional", "float", "max", 4, "1"),
        ("optional", "float", "mean", 5, "0"),
        ("optional", "float", "std", 6, "1"),
        ("optional", "int32", "sparse", 7, "-1"),
        ("optional", "VarianceNorm", "variance_norm", 8, "FAN_IN"),
    ]),
    "NetParameter": ({}, [
        ("optional", "string", "name", 1),
        ("repeated", "string", "input", 3),
        ("repeated", "BlobShape", "input_shape", 8),
        ("repeated", "int32", "input_dim", 4),
        ("optional", "bool", "force_backward", 5, "false"),
        ("optional", "NetState", "state", 6),
        ("optional", "bool", "debug_info", 7, "false"),
        ("repeated", "LayerParameter", "layer", 100),
        ("repeated", "V1LayerParameter", "layers", 2),
    ]),
    "NetState": ({}, [
        ("optional", "Phase", "phase", 1, "TEST"),
        ("optional", "int32", "level", 2, "0"),
        ("repeated", "string", "stage", 3),
    ]),
    "NetStateRule": ({}, [
        ("optional", "Phase", "phase", 1),
        ("optional", "int32", "min_level", 2),
        ("optional", "int32", "max_level", 3),
        ("repeated", "string", "stage", 4),
        ("repeated", "string", "not_stage", 5),
    ]),
    "ParamSpec": ({"DimCheckMode": ("STRICT", "PERMISSIVE")}, [
        ("optional", "string", "name", 1),
        ("optional", "DimCheckMode", "share_mode", 2),
        ("optional", "float", "lr_mult", 3, "1"),
        ("optional", "float", "decay_mult", 4, "1"),
    ]),
    "LayerParameter": ({}, [
        ("optional", "string", "name", 1),
        ("optional", "string", "type", 2),
        ("repeated", "string", "bottom", 3),
        ("repeated", "string", "top", 4),
        ("optional", "Phase", "phase", 10),
        ("repeated", "float", "loss_weight", 5),
        ("repeated", "ParamSpec", "param", 6),
        ("repeated", "BlobProto", "blobs", 7),
        ("repeated", "bool", "propagate_down", 11),
        ("repeated", "NetStateRule", "include", 8),
        ("repeated", "NetStateRule", "exclude", 9),
        ("optional", "TransformationParameter", "transform_param", 100),
        ("optional", "LossParameter", "loss_param", 101),
        ("optional", "AccuracyParameter", "accuracy_param", 102),
        ("optional", "BatchNormParameter", "batch_norm_param", 139),
        ("optional", "BiasParameter", "bias_param", 141),
        ("optional", "ConcatParameter", "concat_param", 104),
        ("optional", "ConvolutionParameter", "convolution_param", 106),
        ("optional", "DataParameter", "data_param", 107),
        ("optional", "DropoutParameter", "dropout_param", 108),
        ("optional", "EltwiseParameter", "eltwise_param", 110),
        ("optional", "ELUParameter", "elu_param", 140),
        ("optional", "FlattenParameter", "flatten_param", 135),
        ("optional", "HDF5DataParameter", "hdf5_data_param", 112),
        ("optional", "ImageDataParameter", "image_data_param", 115),
        ("optional", "InnerProductParameter", "inner_product_param", 117),
        ("optional", "InputParameter", "input_param", 143),
        ("optional", "LRNParameter", "lrn_param", 118),
        ("optional", "MemoryDataParameter", "memory_data_param", 119),
        ("optional", "PoolingParameter", "pooling_param", 121),
        ("optional", "PowerParameter", "power_param", 122),
        ("optional", "PReLUParameter", "prelu_param", 131),
        ("optional", "ReLUParameter", "relu_param", 123),
        ("optional", "ScaleParameter", "scale_param", 142),
        ("optional", "SigmoidParameter", "sigmoid_param", 124),
        ("optional", "SoftmaxParameter", "softmax_param", 125),
        ("optional", "TanHParameter", "tanh_param", 127),
        ("optional", "WindowDataParameter", "window_data_param", 129),
    ]),
    "TransformationParameter": ({}, [
        ("optional", "float", "scale", 1, "1"),
        ("optional", "bool", "mirror", 2, "false"),
        ("optional", "uint32", "crop_size", 3, "0"),
        ("optional", "string", "mean_file", 4),
        ("repeated", "float", "mean_value", 5),
        ("optional", "bool", "force_color", 6, "false"),
        ("optional", "bool", "force_gray", 7, "false"),
    ]),
    "LossParameter": ({"NormalizationMode": ("FULL", "VALID", "BATCH_SIZE", "NONE")}, [
        ("optional", "int32", "ignore_label", 1),
        ("optional", "NormalizationMode", "normalization", 3, "VALID"),
        ("optional", "bool", "normalize", 2),
    ]),
    "AccuracyParameter": ({}, [
        ("optional", "uint32", "top_k", 1, "1"),
        ("optional", "int32", "axis", 2, "1"),
        ("optional", "int32", "ignore_label", 3),
    ]),
    "BatchNormParameter": ({}, [
        ("optional", "bool", "use_global_stats", 1),
        ("optional", "float", "moving_average_fraction", 2, "0.999"),
        ("optional", "float", "eps", 3, "1e-5"),
    ]),
    "BiasParameter": ({}, [
        ("optional", "int32", "axis", 1, "1"),
        ("optional", "int32", "num_axes", 2, "1"),
        ("optional", "FillerParameter", "filler", 3),
    ]),
    "ConcatParameter": ({}, [
        ("optional", "int32", "axis", 2, "1"),
        ("optional", "uint32", "concat_dim", 1, "1"),
    ]),
    "ConvolutionParameter": ({"Engine": _ENGINE}, [
        ("optional", "uint32", "num_output", 1),
        ("optional", "bool", "bias_term", 2, "true"),
        ("repeated", "uint32", "pad", 3),
        ("repeated", "uint32", "kernel_size", 4),
        ("repeated", "uint32", "stride", 6),
        ("repeated", "uint32", "dilation", 18),
        ("optional", "uint32", "pad_h", 9, "0"),
        ("optional", "uint32", "pad_w", 10, "0"),
        ("optional", "uint32", "kernel_h", 11),
        ("optional", "uint32", "kernel_w", 12),
        ("optional", "uint32", "stride_h", 13),
        ("optional", "uint32", "stride_w", 14),
        ("optional", "uint32", "group", 5, "1"),
        ("optional", "FillerParameter", "weight_filler", 7),
        ("optional", "FillerParameter", "bias_filler", 8),
        ("optional", "Engine", "engine", 15, "DEFAULT"),
        ("optional", "int32", "axis", 16, "1"),
        ("optional", "bool", "force_nd_im2col", 17, "false"),
    ]),
    "DataParameter": ({"DB": ("LEVELDB", "LMDB")}, [
        ("optional", "string", "source", 1),
        ("optional", "uint32", "batch_size", 4),
        ("optional", "uint32", "rand_skip", 7, "0"),
        ("optional", "DB", "backend", 8, "LEVELDB"),
        ("optional", "float", "scale", 2, "1"),
        ("optional", "string", "mean_file", 3),
        ("optional", "uint32", "crop_size", 5, "0"),
        ("optional", "bool", "mirror", 6, "false"),
        ("optional", "bool", "force_encoded_color", 9, "false"),
        ("optional", "uint32", "prefetch", 10, "4"),
    ]),
    "DropoutParameter": ({}, [("optional", "float", "dropout_ratio", 1, "0.5")]),
    "EltwiseParameter": ({"EltwiseOp": ("PROD", "SUM", "MAX")}, [
        ("optional", "EltwiseOp", "operation", 1, "SUM"),
        ("repeated", "float", "coeff", 2),
        ("optional", "bool", "stable_prod_grad", 3, "true"),
    ]),
    "ELUParameter": ({}, [("optional", "float", "alpha", 1, "1")]),
    "FlattenParameter": ({}, [
        ("optional", "int32", "axis", 1, "1"),
        ("optional", "int32", "end_axis", 2, "-1"),
    ]),
    "HDF5DataParameter": ({}, [
        ("optional", "string", "source", 1),
        ("optional", "uint32", "batch_size", 2),
        ("optional", "bool", "shuffle", 3, "false"),
    ]),
    "ImageDataParameter": ({}, [
        ("optional", "string", "source", 1),
        ("optional", "uint32", "batch_size", 4, "1"),
        ("optional", "uint32", "rand_skip", 7, "0"),
        ("optional", "bool", "shuffle", 8, "false"),
        ("optional", "uint32", "new_height", 9, "0"),
        ("optional", "uint32", "new_width", 10, "0"),
        ("optional", "bool", "is_color", 11, "true"),
        ("optional", "float", "scale", 2, "1"),
        ("optional", "string", "mean_file", 3),
        ("optional", "uint32", "crop_size", 5, "0"),
        ("optional", "bool", "mirror", 6, "false"),
        ("optional", "string", "root_folder", 12, ""),
    ]),
    "InnerProductParameter": ({}, [
        ("optional", "uint32", "num_output", 1),
        ("optional", "bool", "bias_term", 2, "true"),
        ("optional", "FillerParameter", "weight_filler", 3),
        ("optional", "FillerParameter", "bias_filler", 4),
        ("optional", "int32", "axis", 5, "1"),
        ("optional", "bool", "transpose", 6, "false"),
    ]),
    "InputParameter": ({}, [("repeated", "BlobShape", "shape", 1)]),
    "LRNParameter": ({"NormRegion": ("ACROSS_CHANNELS", "WITHIN_CHANNEL"), "Engine": _ENGINE}, [
        ("optional", "uint32", "local_size", 1, "5"),
        ("optional", "float", "alpha", 2, "1"),
        ("optional", "float", "beta", 3, "0.75"),
        ("optional", "NormRegion", "norm_region", 4, "ACROSS_CHANNELS"),
        ("optional", "float", "k", 5, "1"),
        ("optional", "Engine", "engine", 6, "DEFAULT"),
    ]),
    "MemoryDataParameter": ({}, [
        ("optional", "uint32", "batch_size", 1),
        ("optional", "uint32", "channels", 2),
        ("optional", "uint32", "height", 3),
        ("optional", "uint32", "width", 4),
    ]),
    "PoolingParameter": ({"PoolMethod": ("MAX", "AVE", "STOCHASTIC"), "Engine": _ENGINE,
                          "RoundMode": ("CEIL", "FLOOR")}, [
        ("optional", "PoolMethod", "pool", 1, "MAX"),
        ("optional", "uint32", "pad", 4, "0"),
        ("optional", "uint32", "pad_h", 9, "0"),
        ("optional", "uint32", "pad_w", 10, "0"),
        ("optional", "uint32", "kernel_size", 2),
        ("optional", "uint32", "kernel_h", 5),
        ("optional", "uint32", "kernel_w", 6),
        ("optional", "uint32", "stride", 3, "1"),
        ("optional", "uint32", "stride_h", 7),
        ("optional", "uint32", "stride_w", 8),
        ("optional", "Engine", "engine", 11, "DEFAULT"),
        ("optional", "bool", "global_pooling", 12, "false"),
        ("optional", "RoundMode", "round_mode", 13, "CEIL"),
    ]),
    "PowerParameter": ({}, [
        ("optional", "float", "power", 1, "1"),
        ("optional", "float", "scale", 2, "1"),
        ("optional", "float", "shift", 3, "0"),
    ]),
    "PReLUParameter": ({}, [
        ("optional", "FillerParameter", "filler", 1),
        ("optional", "bool", "channel_shared", 2, "false"),
    ]),
    "ReLUParameter": ({"Engine": _ENGINE}, [
        ("optional", "float", "negative_slope", 1, "0"),
        ("optional", "Engine", "engine", 2, "DEFAULT"),
    ]),
    "ScaleParameter": ({}, [
        ("optional", "int32", "axis", 1, "1"),
        ("optional", "int32", "num_axes", 2, "1"),
        ("optional", "FillerParameter", "filler", 3),
        ("optional", "bool", "bias_term", 4, "false"),
        ("optional", "FillerParameter", "bias_filler", 5),
    ]),
    "SigmoidParameter": ({"Engine": _ENGINE}, [("optional", "Engine", "engine", 1, "DEFAULT")]),
    "SoftmaxParameter": ({"Engine": _ENGINE}, [
        ("optional", "Engine", "engine", 1, "DEFAULT"),
        ("optional", "int32", "axis", 2, "1"),
    ]),
    "TanHParameter": ({"Engine": _ENGINE}, [("optional", "Engine", "engine", 1, "DEFAULT")]),
    "WindowDataParameter": ({}, [
        ("optional", "string", "source", 1),
        ("optional", "float", "scale", 2, "1"),
        ("optional", "string", "mean_file", 3),
        ("optional", "uint32", "batch_size", 4),
        ("optional", "uint32", "crop_size", 5, "0"),
        ("optional", "bool", "mirror", 6, "false"),
    ]),
    # The legacy (2014) layer format: enum types, fields numbered differently.
    "V1LayerParameter": ({"LayerType": (
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39),
        ("DROPOUT", 6), ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38),
        ("FLATTEN", 8), ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11),
        ("IMAGE_DATA", 12), ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15),
        ("MEMORY_DATA", 29), ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17),
        ("POWER", 26), ("RELU", 18), ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27),
        ("SILENCE", 36), ("SOFTMAX", 20), ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33),
        ("TANH", 23), ("WINDOW_DATA", 24), ("THRESHOLD", 31)),
        "DimCheckMode": ("STRICT", "PERMISSIVE")}, [
        ("repeated", "string", "bottom", 2),
        ("repeated", "string", "top", 3),
        ("optional", "string", "name", 4),
        ("repeated", "NetStateRule", "include", 32),
        ("repeated", "NetStateRule", "exclude", 33),
        ("optional", "LayerType", "type", 5),
        ("repeated", "BlobProto", "blobs", 6),
        ("repeated", "string", "param", 1001),
        ("repeated", "DimCheckMode", "blob_share_mode", 1002),
        ("repeated", "float", "blobs_lr", 7),
        ("repeated", "float", "weight_decay", 8),
        ("repeated", "float", "loss_weight", 35),
        ("optional", "AccuracyParameter", "accuracy_param", 27),
        ("optional", "ConcatParameter", "concat_param", 9),
        ("optional", "ConvolutionParameter", "convolution_param", 10),
        ("optional", "DataParameter", "data_param", 11),
        ("optional", "DropoutParameter", "dropout_param", 12),
        ("optional", "EltwiseParameter", "eltwise_param", 24),
        ("optional", "HDF5DataParameter", "hdf5_data_param", 13),
        ("optional", "ImageDataParameter", "image_data_param", 15),
        ("optional", "InnerProductParameter", "inner_product_param", 17),
        ("optional", "LRNParameter", "lrn_param", 18),
        ("optional", "MemoryDataParameter", "memory_data_param", 22),
        ("optional", "PoolingParameter", "pooling_param", 19),
        ("optional", "PowerParameter", "power_param", 21),
        ("optional", "ReLUParameter", "relu_param", 30),
        ("optional", "SigmoidParameter", "sigmoid_param", 38),
        ("optional", "SoftmaxParameter", "softmax_param", 39),
        ("optional", "TanHParameter", "tanh_param", 37),
        ("optional", "WindowDataParameter", "window_data_param", 20),
        ("optional", "TransformationParameter", "transform_param", 36),
        ("optional", "LossParameter", "loss_param", 42),
        ("optional", "V0LayerParameter", "layer", 1),
    ]),
    # The pre-2014 format, declared only so that it can be recognised and refused clearly.
    "V0LayerParameter": ({}, [
        ("optional", "string", "name", 1),
        ("optional", "string", "type", 2),
    ]),
}


def _enum_values(values) -> list[tuple[str, int]]:
  return [v if isinstance(v, tuple) else (v, i) for i, v in enumerate(values)]


def _add_enum(container, name: str, values) -> None:
  enum = container.enum_type.add(name=name)
  for value_name, number in _enum_values(values):
    enum.value.add(name=value_name, number=number)


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
  fd = descriptor_pb2.FileDescriptorProto(name="persistent/caffe.proto", package=PACKAGE,
                                          syntax="proto2")
  for name, values in _ENUMS.items():
    _add_enum(fd, name, values)
  for msg_name, (enums, fields) in _MESSAGES.items():
    msg = fd.message_type.add(name=msg_name)
    for enum_name, values in enums.items():
      _add_enum(msg, enum_name, values)
    for label, typ, name, number, *default in fields:
      field = msg.field.add(name=name, number=number, label=_LABELS[label])
      if typ in _SCALARS:
        field.type = _SCALARS[typ]
        if (msg_name, name) in _PACKED:
          field.options.packed = True
      elif typ in enums:
        field.type, field.type_name = _F.TYPE_ENUM, f".{PACKAGE}.{msg_name}.{typ}"
      elif typ in _ENUMS or "." in typ:
        field.type, field.type_name = _F.TYPE_ENUM, f".{PACKAGE}.{typ}"
      elif typ in _MESSAGES:
        field.type, field.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{typ}"
      else:
        raise AssertionError(f"unknown type {typ!r} in caffe schema")
      if default:
        field.default_value = default[0]
  return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def message_class(name: str):
  """The generated message class for a Caffe message name, e.g. 'NetParameter'."""
  return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
V1LayerParameter = message_class("V1LayerParameter")
BlobProto = message_class("BlobProto")
BlobShape = message_class("BlobShape")


def enum_name(message, field: str) -> str:
  """The symbolic name of an enum field's value (its default when unset)."""
  fd = message.DESCRIPTOR.fields_by_name[field]
  value = getattr(message, field)
  ev = fd.enum_type.values_by_number.get(value)
  return ev.name if ev is not None else str(value)


def parse_text(text: str, message=None):
  """Parses protobuf text format into a NetParameter, skipping fields this schema lacks."""
  message = NetParameter() if message is None else message
  return text_format.Parse(text, message, allow_unknown_field=True)
