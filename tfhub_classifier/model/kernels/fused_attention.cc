// Scaled dot-product attention in float32 as one CPU kernel: for each text, head and block of query
// rows, softmax(query . key^T * scale + mask) . value, the block's scores kept in cache from the product
// to the product with the values. TensorFlow has no such kernel for CPUs; its ops write the whole
// batch's [batch, heads, length, length] scores to memory between each step, and transpose the heads
// around them. Compiled for the CPU it runs on by model/kernel_library.py.
//
// On CPUs with AVX2 and FMA, when the values' size is a multiple of 16 (BERTs' 32 or 64), the two
// products run on 6x16 register tiles over operands packed per text and head, and the softmax on 8
// floats at a time; otherwise (and on other CPUs) on Eigen's matrix products, as the same arithmetic.
//
// query [B, N, T, D] or [B, T, N, D], key [B, N, S, D] or [B, S, N, D], value [B, N, S, Dv] or
// [B, S, N, Dv] (heads_axes[k] says which, 1 or 2, for query, key, value and the output); mask: added to
// the scaled scores, rank 4, each axis the size of [B, N, T, S]'s or 1 (broadcast).
#define EIGEN_USE_THREADS
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "Eigen/Dense"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CLASSIFIER_ATTENTION_TILES 1
#endif

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
namespace shape_inference = tensorflow::shape_inference;

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRows = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;
using Rows = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;

// Query rows a task takes: its [rows, S] scores stay in the core's cache (128 KiB at 512 keys).
constexpr int64_t kRowsPerTask = 64;
// The tiled path's: query rows per block of scores (a multiple of the tile's 6 rows), and the tile.
constexpr int64_t kRowsPerBlock = 60, kTileRows = 6, kTileColumns = 16;

// The layout of a [B, N, L, D] or [B, L, N, D] tensor: element offsets per text, head and row (depth is
// contiguous).
struct Layout {
  int64_t texts, heads, length, depth;
  int64_t text_stride, head_stride, row_stride;
  Layout(const Tensor& t, int heads_axis)
      : texts(t.dim_size(0)),
        heads(t.dim_size(heads_axis)),
        length(t.dim_size(3 - heads_axis)),
        depth(t.dim_size(3)) {
    row_stride = heads_axis == 1 ? depth : heads * depth;
    head_stride = heads_axis == 1 ? length * depth : depth;
    text_stride = heads * length * depth;
  }
  int64_t offset(int64_t text, int64_t head, int64_t row) const {
    return text * text_stride + head * head_stride + row * row_stride;
  }
};

#ifdef CLASSIFIER_ATTENTION_TILES
// c[R x 16] (rows ldc apart) = a[R x depth] (rows lda apart) . b[depth x 16] (rows ldb apart). The 2 R
// accumulators are named variables: as an array, GCC stores them to the stack on every step.
#define CLASSIFIER_TILE_ROWS(STEP) STEP(0) STEP(1) STEP(2) STEP(3) STEP(4) STEP(5)
template <int R>
inline void Tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float* c, int64_t ldc) {
#define CLASSIFIER_ZERO(r) __m256 low##r = _mm256_setzero_ps(), high##r = _mm256_setzero_ps();
  CLASSIFIER_TILE_ROWS(CLASSIFIER_ZERO)
  for (int64_t k = 0; k < depth; ++k, b += ldb) {
    const __m256 b_low = _mm256_loadu_ps(b), b_high = _mm256_loadu_ps(b + 8);
#define CLASSIFIER_STEP(r)                                  \
    if constexpr (R > r) {                                  \
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k); \
      low##r = _mm256_fmadd_ps(x, b_low, low##r);           \
      high##r = _mm256_fmadd_ps(x, b_high, high##r);        \
    }
    CLASSIFIER_TILE_ROWS(CLASSIFIER_STEP)
  }
#define CLASSIFIER_STORE(r)                           \
  if constexpr (R > r) {                              \
    _mm256_storeu_ps(c + r * ldc, low##r);            \
    _mm256_storeu_ps(c + r * ldc + 8, high##r);       \
  }
  CLASSIFIER_TILE_ROWS(CLASSIFIER_STORE)
#undef CLASSIFIER_ZERO
#undef CLASSIFIER_STEP
#undef CLASSIFIER_STORE
}

// c[rows x columns] = a[rows x depth] . b, b's columns in panels of 16 ([depth x 16], rows ldb apart), each
// panel_offset after the one before.
void Product(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t panel_offset, int64_t depth, float* c,
             int64_t ldc, int64_t rows, int64_t columns) {
  for (int64_t j = 0; j < columns; j += kTileColumns, b += panel_offset) {
    for (int64_t i = 0; i < rows; i += kTileRows) {
      const float* a_rows = a + i * lda;
      float* c_rows = c + i * ldc + j;
      switch (std::min(kTileRows, rows - i)) {
        case 6: Tile<6>(a_rows, lda, b, ldb, depth, c_rows, ldc); break;
        case 5: Tile<5>(a_rows, lda, b, ldb, depth, c_rows, ldc); break;
        case 4: Tile<4>(a_rows, lda, b, ldb, depth, c_rows, ldc); break;
        case 3: Tile<3>(a_rows, lda, b, ldb, depth, c_rows, ldc); break;
        case 2: Tile<2>(a_rows, lda, b, ldb, depth, c_rows, ldc); break;
        default: Tile<1>(a_rows, lda, b, ldb, depth, c_rows, ldc); break;
      }
    }
  }
}

// keys_t, in panels of 16 keys ([depth x 16] each, contiguous): the keys [keys x depth] (rows ldk apart)
// transposed, 8 x 8 at a time, the keys past the last up to padded (a multiple of 16) zero. depth % 8 == 0.
void PackTransposed(const float* key_rows, int64_t ldk, int64_t keys, int64_t padded, int64_t depth, float* keys_t) {
  for (int64_t s = 0; s < padded; s += 8) {
    float* panel = keys_t + (s / kTileColumns) * depth * kTileColumns + s % kTileColumns;
    for (int64_t d = 0; d < depth; d += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = s + i < keys ? _mm256_loadu_ps(key_rows + (s + i) * ldk + d) : _mm256_setzero_ps();
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]),
                   t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]),
                   t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]),
                   t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                   u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                   u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                   u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 columns[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                                 _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                                 _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                                 _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(panel + (d + i) * kTileColumns, columns[i]);
    }
  }
}

// row[0:keys] = exp(row * scale + mask - their max), the columns up to padded (a multiple of 8) zero;
// returns the sum of the row.
float Softmax(float* row, int64_t keys, int64_t padded, float scale, const float* mask, bool mask_per_key) {
  const __m256 scales = _mm256_set1_ps(scale);
  __m256 top = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= keys; j += 8) {
    const __m256 added = mask_per_key ? _mm256_loadu_ps(mask + j) : _mm256_set1_ps(mask[0]);
    const __m256 x = _mm256_fmadd_ps(_mm256_loadu_ps(row + j), scales, added);
    _mm256_storeu_ps(row + j, x);
    top = _mm256_max_ps(top, x);
  }
  float largest = Eigen::internal::predux_max(top);
  for (; j < keys; ++j) {
    row[j] = row[j] * scale + (mask_per_key ? mask[j] : mask[0]);
    largest = std::max(largest, row[j]);
  }
  for (; j < padded; ++j) row[j] = -INFINITY;
  const __m256 shift = _mm256_set1_ps(largest);
  __m256 sums = _mm256_setzero_ps();
  for (j = 0; j < padded; j += 8) {
    const __m256 x = _mm256_loadu_ps(row + j);
    // exp of the -inf padding is 0 (Eigen's pexp clamps below, so it is masked out); a NaN stays NaN
    const __m256 e = _mm256_and_ps(Eigen::internal::pexp(_mm256_sub_ps(x, shift)),
                                   _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_UQ));
    _mm256_storeu_ps(row + j, e);
    sums = _mm256_add_ps(sums, e);
  }
  return Eigen::internal::predux(sums);
}
#endif

tensorflow::Status ShapeOf(shape_inference::InferenceContext* c) {
  std::vector<int> axes;
  TF_RETURN_IF_ERROR(c->GetAttr("heads_axes", &axes));
  if (axes.size() != 4) return InvalidArgument("heads_axes needs 4 entries");
  for (int axis : axes) {
    if (axis != 1 && axis != 2) return InvalidArgument("a heads axis is 1 or 2");
  }
  shape_inference::ShapeHandle query, value;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &query));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 4, &value));
  auto texts = c->Dim(query, 0), heads = c->Dim(query, axes[0]), rows = c->Dim(query, 3 - axes[0]);
  auto depth = c->Dim(value, 3);
  c->set_output(0, axes[3] == 1 ? c->MakeShape({texts, heads, rows, depth}) : c->MakeShape({texts, rows, heads, depth}));
  return absl::OkStatus();
}

class FusedAttentionOp : public OpKernel {
 public:
  explicit FusedAttentionOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(context, context->GetAttr("heads_axes", &heads_axes_));
    OP_REQUIRES(context, heads_axes_.size() == 4, InvalidArgument("heads_axes needs 4 entries"));
    for (int axis : heads_axes_) OP_REQUIRES(context, axis == 1 || axis == 2, InvalidArgument("a heads axis is 1 or 2"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor &query = context->input(0), &key = context->input(1), &value = context->input(2),
                 &mask = context->input(3);
    for (const Tensor* t : {&query, &key, &value, &mask}) {
      OP_REQUIRES(context, t->dims() == 4, InvalidArgument("attention's operands have rank 4"));
    }
    const Layout q(query, heads_axes_[0]), k(key, heads_axes_[1]), v(value, heads_axes_[2]);
    OP_REQUIRES(context, k.texts == q.texts && v.texts == q.texts && k.heads == q.heads && v.heads == q.heads,
                InvalidArgument("query, key and value differ in texts or heads"));
    OP_REQUIRES(context, k.depth == q.depth && v.length == k.length,
                InvalidArgument("key's depth or value's length does not match"));
    const int64_t sizes[4] = {q.texts, q.heads, q.length, k.length};
    int64_t mask_strides[4];
    int64_t stride = 1;
    for (int axis = 3; axis >= 0; --axis) {
      const int64_t size = mask.dim_size(axis);
      OP_REQUIRES(context, size == sizes[axis] || size == 1,
                  InvalidArgument("the mask does not broadcast to [texts, heads, queries, keys]"));
      mask_strides[axis] = size == 1 ? 0 : stride;
      stride *= size;
    }
    const TensorShape out_shape = heads_axes_[3] == 1 ? TensorShape({q.texts, q.heads, q.length, v.depth})
                                                      : TensorShape({q.texts, q.length, q.heads, v.depth});
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, out_shape, &output));
    const Layout o(*output, heads_axes_[3]);
    float* out = output->flat<float>().data();
    if (output->NumElements() == 0) return;
    if (k.length == 0) {  // no keys: the product with no values is zero
      std::fill(out, out + output->NumElements(), 0.0f);
      return;
    }
    const float *qd = query.flat<float>().data(), *kd = key.flat<float>().data(), *vd = value.flat<float>().data(),
                *md = mask.flat<float>().data();
#ifdef CLASSIFIER_ATTENTION_TILES
    if (v.depth % kTileColumns == 0 && q.depth % 8 == 0) {
      Tiled(context, q, k, v, o, qd, kd, vd, md, mask_strides, out);
      return;
    }
#endif
    const int64_t blocks = (q.length + kRowsPerTask - 1) / kRowsPerTask, keys = k.length;
    const float scale = scale_;

    auto work = [&](int64_t begin, int64_t end) {
      RowMajor scores;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t text = task / (q.heads * blocks), head = (task / blocks) % q.heads;
        const int64_t first = (task % blocks) * kRowsPerTask, rows = std::min(kRowsPerTask, q.length - first);
        ConstRows queries(qd + q.offset(text, head, first), rows, q.depth, Eigen::OuterStride<>(q.row_stride));
        ConstRows keys_(kd + k.offset(text, head, 0), keys, k.depth, Eigen::OuterStride<>(k.row_stride));
        ConstRows values(vd + v.offset(text, head, 0), keys, v.depth, Eigen::OuterStride<>(v.row_stride));
        Rows result(out + o.offset(text, head, first), rows, o.depth, Eigen::OuterStride<>(o.row_stride));
        scores.resize(rows, keys);
        scores.noalias() = queries * keys_.transpose();
        for (int64_t i = 0; i < rows; ++i) {
          auto row = scores.row(i).array();
          const float* added = md + text * mask_strides[0] + head * mask_strides[1] + (first + i) * mask_strides[2];
          if (mask_strides[3] == 0) {
            row = row * scale + added[0];
          } else {
            row = row * scale + Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>>(added, keys);
          }
          row = (row - row.maxCoeff()).exp();
          row *= 1.0f / row.sum();
        }
        result.noalias() = scores * values;
      }
    };
    // Cost per task, in TensorFlow's units (about a cycle each): both products' multiply-adds and the softmax.
    const int64_t cost = kRowsPerTask * keys * (q.depth + v.depth + 20);
    context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(q.texts * q.heads * blocks, cost, work);
  }

#ifdef CLASSIFIER_ATTENTION_TILES
  // A task per text and head: its keys packed transposed, in panels of 16 keys; then, a block of query rows
  // at a time, scores, softmax and the product with the values (read in place).
  void Tiled(OpKernelContext* context, const Layout& q, const Layout& k, const Layout& v, const Layout& o,
             const float* qd, const float* kd, const float* vd, const float* md, const int64_t* mask_strides,
             float* out) {
    const int64_t keys = k.length, padded = (keys + kTileColumns - 1) / kTileColumns * kTileColumns;
    const float scale = scale_;
    auto work = [&](int64_t begin, int64_t end) {
      std::vector<float> keys_t(padded * k.depth), scores(kRowsPerBlock * padded), sums(kRowsPerBlock);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t text = task / q.heads, head = task % q.heads;
        PackTransposed(kd + k.offset(text, head, 0), k.row_stride, keys, padded, k.depth, keys_t.data());
        const float* value_rows = vd + v.offset(text, head, 0);  // read in place: panels of 16 of its rows' columns
        for (int64_t first = 0; first < q.length; first += kRowsPerBlock) {
          const int64_t rows = std::min(kRowsPerBlock, q.length - first);
          Product(qd + q.offset(text, head, first), q.row_stride, keys_t.data(), kTileColumns, k.depth * kTileColumns,
                  k.depth, scores.data(), padded, rows, padded);
          for (int64_t i = 0; i < rows; ++i) {
            const float* added = md + text * mask_strides[0] + head * mask_strides[1] + (first + i) * mask_strides[2];
            sums[i] = Softmax(scores.data() + i * padded, keys, padded, scale, added, mask_strides[3] != 0);
          }
          float* result = out + o.offset(text, head, first);
          Product(scores.data(), padded, value_rows, v.row_stride, kTileColumns, keys, result, o.row_stride, rows, v.depth);
          for (int64_t i = 0; i < rows; ++i) {
            const __m256 inverse = _mm256_set1_ps(1.0f / sums[i]);
            for (int64_t c = 0; c < v.depth; c += 8) {
              _mm256_storeu_ps(result + i * o.row_stride + c,
                               _mm256_mul_ps(_mm256_loadu_ps(result + i * o.row_stride + c), inverse));
            }
          }
        }
      }
    };
    const int64_t cost = q.length * keys * (q.depth + v.depth + 20);
    context->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(q.texts * q.heads, cost, work);
  }
#endif

 private:
  float scale_;
  std::vector<int> heads_axes_;
};

}  // namespace

REGISTER_OP("ClassifierFusedAttention")
    .Input("query: float")
    .Input("key: float")
    .Input("value: float")
    .Input("mask: float")
    .Attr("scale: float")
    .Attr("heads_axes: list(int)")
    .Output("output: float")
    .SetShapeFn(ShapeOf);

REGISTER_KERNEL_BUILDER(Name("ClassifierFusedAttention").Device(tensorflow::DEVICE_CPU), FusedAttentionOp);
