// Op definitions: RoiAlign and its gradient RoiAlignGrad (NHWC features, (y1, x1, y2, x2) boxes
// in input-image pixels). Kernels: ../kernels/roi_align_kernels.cc (CPU) and .cu.cc (CUDA).
// Python side: mrcnn/ops/roi_align.py (loading, gradient registration, pure-TF fallback).

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace mrcnn {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// Checks boxes [K, 4] and box_indices [K]; returns K (merged) in *num_boxes.
absl::Status BoxesShape(InferenceContext* c, int boxes_input, int indices_input,
                        DimensionHandle* num_boxes) {
  ShapeHandle boxes, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_input), 2, &boxes));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(indices_input), 1, &indices));
  DimensionHandle four;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &four));
  return c->Merge(c->Dim(boxes, 0), c->Dim(indices, 0), num_boxes);
}

}  // namespace

// Types: T is the features' (and output's / gradients') dtype, Tboxes the boxes' and the
// arithmetic's: (float, float), (double, double) or (bfloat16, float) (bfloat16 features are
// read and written as they are, computed in float32 with float32 boxes).
REGISTER_OP("RoiAlign")
    .Input("features: T")       // [N, H, W, C]
    .Input("boxes: Tboxes")     // [K, 4] (y1, x1, y2, x2), input-image pixels
    .Input("box_indices: int32")  // [K] in [0, N)
    .Output("output: T")        // [K, pooled_height, pooled_width, C]
    .Attr("T: {bfloat16, float, double}")
    .Attr("Tboxes: {float, double}")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float")
    .Attr("sampling_ratio: int = 2")
    .Attr("aligned: bool = true")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
      DimensionHandle num_boxes;
      TF_RETURN_IF_ERROR(BoxesShape(c, 1, 2, &num_boxes));
      int pooled_h = 0, pooled_w = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &pooled_h));
      TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &pooled_w));
      c->set_output(0, c->MakeShape({num_boxes, c->MakeDim(pooled_h), c->MakeDim(pooled_w),
                                     c->Dim(features, 3)}));
      return absl::OkStatus();
    });

REGISTER_OP("RoiAlignGrad")
    .Input("grads: T")           // [K, pooled_height, pooled_width, C], d loss / d output
    .Input("boxes: Tboxes")      // [K, 4] as in the forward op
    .Input("box_indices: int32")  // [K]
    .Input("features_shape: int32")  // [4] = shape of the forward features
    .Output("grad_features: T")  // [N, H, W, C]
    .Attr("T: {bfloat16, float, double}")
    .Attr("Tboxes: {float, double}")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float")
    .Attr("sampling_ratio: int = 2")
    .Attr("aligned: bool = true")
    .SetShapeFn([](InferenceContext* c) -> absl::Status {
      ShapeHandle grads, shape_vector, features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grads));
      DimensionHandle num_boxes;
      TF_RETURN_IF_ERROR(BoxesShape(c, 1, 2, &num_boxes));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(grads, 0), num_boxes, &num_boxes));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &shape_vector));
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(3, &features));
      TF_RETURN_IF_ERROR(c->WithRank(features, 4, &features));
      // The channel count must agree between the gradient and the features.
      DimensionHandle channels;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(features, 3), c->Dim(grads, 3), &channels));
      TF_RETURN_IF_ERROR(c->ReplaceDim(features, 3, channels, &features));
      c->set_output(0, features);
      return absl::OkStatus();
    });

}  // namespace mrcnn
