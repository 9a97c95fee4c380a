// Fused group self-attention on the CPU: forward and backward, one query at a time.
//
// The math is that of g_selfatt/nn/efficient_attention.py (letters as in
// g_selfatt/nn/attention.py). For a query pixel i of head-batch b, output element v
// and query element g, over the valid keys (k, m):
//
//   logit[v,g,k,m] = c[g,k,m] + pl[v,g,k] + gl[v,g,m]
//     c  = <q[g], key[k,m]>                (content, the same for every v)
//     pl = <q_pos[g], E[v, offset(i,k)]>   (positional)
//     gl = <q_grp[g], E_G[v,g,m]>          (group; 0 for lifting layers)
//   p   = softmax over (k,m)
//   out[v] = sum_{g,k,m} dropout(p)[v,g,k,m] val[k,m]
//
// Each logit is a sum of three terms, so exp(logit - max) factors into
// exp(c - max c) exp(pl - max pl) exp(gl - max gl): the exponentials are taken at the
// terms' own sizes (G K M + V G (K + M) instead of V G K M per query). A row whose
// factored sum underflows (the three maxima far apart) is recomputed directly.
//
// Keys are described by segments: runs of consecutive pixels whose offset-table
// entries are consecutive as well (one image row of a neighbourhood or of the whole
// image). Keys outside the image are simply absent, so no padding and no -inf appear.
//
// Layouts (row-major, contiguous):
//   q          (BN, HW, G, C)   already divided by sqrt(C_in)
//   kc, vc     (BN, C, HW, M)   channel-major (a segment is contiguous per channel), or
//              (BN, HW, M, C)   pixel-major (a segment is one contiguous block)
//   pos        (V, D2, T)       channel-major, or (V, T, D2) pixel-major; T = P P (local), S S (global)
//   grp        (V, G, M, Dg)    absent for lifting layers
//   out        (BN, HW, V, C)
//   lse        (BN, HW, V, G)   log-sum-exp of each softmax row, kept for the backward pass
//
// Work is split into (head-batch, query block) tasks taken from an atomic counter by the
// threads of torch's OpenMP runtime (or, without one, by threads of the kernel's own), so a
// thread that the OS deschedules delays only its own tasks.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <limits>
#include <thread>
#include <vector>
#ifdef FUSED_PHASES
#include <chrono>
#endif

namespace {

// Where the lanes kernel spends its time: nanoseconds per phase, summed over tiles and threads,
// for benchmarks/kernel_phases.py. Compiled in with -DFUSED_PHASES only; otherwise PHASE(...)
// is nothing and the kernel is the same.
#define FUSED_PHASE_LIST(X)                                                                              \
  X(forward_content) X(forward_rows) X(forward_out) X(backward_content) X(backward_dp)                  \
  X(backward_factors) X(backward_rows) X(backward_tables) X(backward_grad_v) X(backward_grad_q_content) \
  X(backward_grad_k)
#define FUSED_PHASE_ENUM(name) name,
enum PhaseId { FUSED_PHASE_LIST(FUSED_PHASE_ENUM) kPhases };
#ifdef FUSED_PHASES
std::atomic<uint64_t> phase_ns[kPhases];
struct PhaseTimer {
  PhaseId id;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  ~PhaseTimer() {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
    phase_ns[id].fetch_add(static_cast<uint64_t>(ns.count()), std::memory_order_relaxed);
  }
};
#define PHASE(name) const PhaseTimer phase_timer{name}
#else
#define PHASE(name)
#endif

struct Problem {
  int64_t bn, height, width, g, m, v, c, d2, dg;
  int64_t local, patch, radius;  // local: patch side P; global: radius r of the S x S table
  int64_t threads, block;        // worker threads; queries per task
  int64_t dropout;               // 1: apply the dropout mask
  int64_t pixel_major;           // layouts of keys, values and table: 1 pixel-major, 0 channel-major
  int64_t lanes, key_lanes;      // lanes layout: L and LK (see "lanes" below)
  int64_t padded_width;          // lanes layout: Wp = W + r
  int64_t pos_heads;             // lanes layout: 1, or N positional tables, head n of head-batch b = b mod N
  int64_t pos_bases;             // lanes layout with perm: U tables that every v's table permutes
  uint64_t seed;
  uint32_t threshold;            // an entry is kept when its 24-bit hash is below this
  double keep_scale;             // 2^24 / threshold (0 when everything is dropped)
};

struct Segment {
  int64_t key;     // first key pixel (row-major in the H x W image)
  int64_t pos;     // first offset-table entry
  int64_t length;  // consecutive pixels
  int64_t start;   // first compact key index of the segment
};

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// For one uint32_t, or a vector of them lane by lane.
template <typename U>
inline U mix32(U x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

inline uint64_t row_key(uint64_t seed, uint64_t row) { return splitmix64(seed + splitmix64(row)); }

// The hash of entry x of a softmax row behind kept(), the row's key given as its two 32-bit halves;
// for one entry, or a vector of rows lane by lane.
template <typename U>
inline U dropout_hash(U key_lo, U key_hi, U x) {
  return mix32(mix32(x * 0x9E3779B9u + key_lo) ^ key_hi);
}

// The kept flag of entry x of a softmax row: the same in the forward and backward pass.
inline bool kept(uint64_t key, uint32_t x, uint32_t threshold) {
  const uint32_t h = dropout_hash<uint32_t>(static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32), x);
  return (h >> 8) < threshold;
}

// ln 2 in two parts (the first exact in float32, so that x - n ln2_hi is exact) and the
// coefficients of the degree-7 polynomial of exp_mantissa, highest first.
constexpr float kLn2Hi = 0.693145751953125f;
constexpr float kLn2Lo = 1.42860682030941723212e-6f;
constexpr float kExpCoefficients[] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f,
                                      1.0f / 6.0f, 0.5f, 1.0f, 1.0f};

// exp(x) / 2^n for float32 (or a vector of them), with n = round(x / ln 2) given: Cody-Waite
// reduction of x by n ln 2, then a degree-7 polynomial (about 1 ulp).
template <typename F>
inline F exp_mantissa(F x, F n) {
  F r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  F p = F{} + kExpCoefficients[0];
  for (int i = 1; i < 8; ++i) p = p * r + kExpCoefficients[i];
  return p;
}

// exp for float32, written without calls so that loops over it vectorise. Below -87 it is 0;
// NaN stays NaN.
inline float exp_approx(float x) {
  float xc = std::min(std::max(x, -87.0f), 88.0f);
  float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  const float scale = __builtin_bit_cast(float, bits);
  float result = exp_mantissa(xc, n) * scale;
  result = x < -87.0f ? 0.0f : result;
  return x != x ? x : result;
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename T> struct Limits;
template <> struct Limits<float> { static constexpr double tiny = 1e-20; };
template <> struct Limits<double> { static constexpr double tiny = 1e-200; };

// O (R x X) (+)= A (R x S) B (S x X); A is read through strides (a_r, a_s), B and O by rows.
// Blocks of 4 rows and 2 vectors of columns are kept in registers over the whole S loop.
template <typename T, int RB>
inline void gemm_nn_block(int64_t S, const T* A, int64_t a_r, int64_t a_s, const T* B, int64_t ldb, T* O,
                          int64_t ldo, bool accumulate, int64_t x0, int64_t n) {
  constexpr int XB = 128 / sizeof(T);
  T acc[RB][XB];
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < XB; ++j) acc[r][j] = accumulate && j < n ? O[r * ldo + x0 + j] : T(0);
  for (int64_t s = 0; s < S; ++s) {
    const T* b = B + s * ldb + x0;
    if (n == XB) {
      for (int r = 0; r < RB; ++r) {
        const T a = A[r * a_r + s * a_s];
#pragma omp simd
        for (int j = 0; j < XB; ++j) acc[r][j] += a * b[j];
      }
    } else {
      for (int r = 0; r < RB; ++r) {
        const T a = A[r * a_r + s * a_s];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) acc[r][j] += a * b[j];
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < n; ++j) O[r * ldo + x0 + j] = acc[r][j];
}

template <typename T>
void gemm_nn(int64_t R, int64_t S, int64_t X, const T* A, int64_t a_r, int64_t a_s, const T* B, int64_t ldb,
             T* O, int64_t ldo, bool accumulate) {
  constexpr int XB = 128 / sizeof(T);
  for (int64_t x0 = 0; x0 < X; x0 += XB) {
    const int64_t n = std::min<int64_t>(XB, X - x0);
    int64_t r = 0;
    for (; r + 4 <= R; r += 4)
      gemm_nn_block<T, 4>(S, A + r * a_r, a_r, a_s, B, ldb, O + r * ldo, ldo, accumulate, x0, n);
    for (; r + 2 <= R; r += 2)
      gemm_nn_block<T, 2>(S, A + r * a_r, a_r, a_s, B, ldb, O + r * ldo, ldo, accumulate, x0, n);
    for (; r < R; ++r) gemm_nn_block<T, 1>(S, A + r * a_r, a_r, a_s, B, ldb, O + r * ldo, ldo, accumulate, x0, n);
  }
}

// O (R x S) (+)= A (R x X) B (S x X)^T: dot products over the long axis X, four at a time.
template <typename T>
void gemm_nt(int64_t R, int64_t S, int64_t X, const T* A, int64_t lda, const T* B, int64_t ldb, T* O,
             int64_t ldo, bool accumulate) {
  for (int64_t r = 0; r < R; ++r) {
    const T* a = A + r * lda;
    int64_t s = 0;
    for (; s + 4 <= S; s += 4) {
      const T *b0 = B + s * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
      T c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#pragma omp simd reduction(+ : c0, c1, c2, c3)
      for (int64_t x = 0; x < X; ++x) {
        c0 += a[x] * b0[x];
        c1 += a[x] * b1[x];
        c2 += a[x] * b2[x];
        c3 += a[x] * b3[x];
      }
      T* o = O + r * ldo + s;
      o[0] = (accumulate ? o[0] : T(0)) + c0;
      o[1] = (accumulate ? o[1] : T(0)) + c1;
      o[2] = (accumulate ? o[2] : T(0)) + c2;
      o[3] = (accumulate ? o[3] : T(0)) + c3;
    }
    for (; s < S; ++s) {
      const T* b = B + s * ldb;
      T c = 0;
#pragma omp simd reduction(+ : c)
      for (int64_t x = 0; x < X; ++x) c += a[x] * b[x];
      O[r * ldo + s] = (accumulate ? O[r * ldo + s] : T(0)) + c;
    }
  }
}

template <typename T, int M>
class Worker {
 public:
  Worker(const Problem& p, const T* q, const T* kc, const T* vc, const T* pos, const T* grp)
      : p_(p), q_(q), kc_(kc), vc_(vc), pos_(pos), grp_(grp) {
    hw_ = p.height * p.width;
    const int64_t side = p.local ? p.patch : 2 * p.radius + 1;
    table_ = side * side;
    const int64_t K = p.local ? p.patch * p.patch : hw_, G = p.g, V = p.v, C = p.c, X = K * M;
    segments_.reserve(p.local ? p.patch : p.height);
    if (p.local && !p.pixel_major) {
      keys_buf_.resize(C * X);
      values_buf_.resize(C * X);
    }
    if (!p.pixel_major) pos_buf_.resize(V * p.d2 * K);
    c_.resize(G * X);
    ec_.resize(G * X);
    pl_.resize(V * G * K);
    ep_.resize(V * G * K);
    gl_.resize(V * G * M);
    eg_.resize(V * G * M);
    cmax_.resize(G);
    pmax_.resize(V * G);
    gmax_.resize(V * G);
    row_.resize(X);
    prob_.resize(X);
    sum_.resize(V * X);
  }

  // out (V, C) and lse (V, G) of query i of head-batch b.
  void forward(int64_t b, int64_t i, T* out, T* lse) {
    scores(b, i);
    const int64_t G = p_.g, V = p_.v, X = keys_ * M;
    for (int64_t v = 0; v < V; ++v) {
      T* psum = sum_.data() + v * X;
      std::fill(psum, psum + X, T(0));
      for (int64_t g = 0; g < G; ++g) {
        const T norm = probabilities(v, g, nullptr, &lse[v * G + g]);
        const T* e = row_.data();
        if (p_.dropout) {
          const uint64_t key = row_key(p_.seed, row_id(b, i, v, g));
          const T keep = static_cast<T>(p_.keep_scale) * norm;
          const uint32_t threshold = p_.threshold;
#pragma omp simd
          for (int64_t x = 0; x < X; ++x) psum[x] += kept(key, uint32_t(x), threshold) ? e[x] * keep : T(0);
        } else {
#pragma omp simd
          for (int64_t x = 0; x < X; ++x) psum[x] += e[x] * norm;
        }
      }
    }
    value_output(b, out);
  }

  // Gradients of query i of head-batch b: writes grad_q (G, C); adds into grad_kc,
  // grad_vc (this head-batch's (C, HW, M) blocks), grad_pos (V, D2, T), grad_grp.
  void backward(int64_t b, int64_t i, const T* grad_out, const T* lse, T* grad_q, T* grad_kc, T* grad_vc,
                T* grad_pos, T* grad_grp) {
    scores(b, i);
    const int64_t G = p_.g, V = p_.v, C = p_.c, D2 = p_.d2, Dg = p_.dg, K = keys_, X = K * M;
    dpd_.resize(V * X);
    gc_.assign(G * X, T(0));
    gpl_.resize(V * G * K);
    ggl_.resize(V * G * M);
    const T* qi = q_ + (b * hw_ + i) * G * C;
    value_side_probabilities(b, grad_out);  // dP before dropout
    for (int64_t v = 0; v < V; ++v) {
      const T* dpd = dpd_.data() + v * X;
      T* dsum = sum_.data() + v * X;
      std::fill(dsum, dsum + X, T(0));
      for (int64_t g = 0; g < G; ++g) {
        const T norm = probabilities(v, g, &lse[v * G + g], nullptr);
        const T* e = row_.data();
        T* prob = prob_.data();
        T* dp = row_.data();  // overwritten in place: dP after dropout
        T delta = 0;
        if (p_.dropout) {
          const uint64_t key = row_key(p_.seed, row_id(b, i, v, g));
          const T keep = static_cast<T>(p_.keep_scale);
          const uint32_t threshold = p_.threshold;
#pragma omp simd reduction(+ : delta)
          for (int64_t x = 0; x < X; ++x) {
            const T pr = e[x] * norm;
            const T mask = kept(key, uint32_t(x), threshold) ? keep : T(0);
            const T d = mask * dpd[x];
            dsum[x] += pr * mask;
            delta += pr * d;
            prob[x] = pr;
            dp[x] = d;
          }
        } else {
#pragma omp simd reduction(+ : delta)
          for (int64_t x = 0; x < X; ++x) {
            const T pr = e[x] * norm;
            dsum[x] += pr;
            delta += pr * dpd[x];
            prob[x] = pr;
            dp[x] = dpd[x];
          }
        }
        // dS = P (dP - delta), summed into the three logit terms.
        T* gc = gc_.data() + g * X;
#pragma omp simd
        for (int64_t x = 0; x < X; ++x) {
          const T ds = prob[x] * (dp[x] - delta);
          dp[x] = ds;  // dp now holds dS
          gc[x] += ds;
        }
        sum_over_elements(dp, gpl_.data() + (v * G + g) * K, K);
        sum_over_keys(dp, ggl_.data() + (v * G + g) * M, K);
      }
    }
    // grad_v = grad_out^T (sum_g P_dropped); grad_k = q^T dS_content.
    key_side_gradient(b, grad_out, V, sum_.data(), grad_vc, gv_);
    key_side_gradient(b, qi, G, gc_.data(), grad_kc, gk_);
    // grad_q: content, positional and group parts; grad_pos; grad_grp = dS_grp q_grp.
    query_gradient(b, grad_q);
    positional_gradient(qi, grad_pos);
    if (grp_ == nullptr) return;
    for (int64_t vg = 0; vg < V * G; ++vg) {
      const int64_t g = vg % G;
      for (int m = 0; m < M; ++m) {
        const T weight = ggl_[vg * M + m];
        const T* e = grp_ + (vg * M + m) * Dg;
        T* dst = grad_grp + (vg * M + m) * Dg;
        for (int64_t d = 0; d < Dg; ++d) {
          grad_q[g * C + D2 + d] += weight * e[d];
          dst[d] += weight * qi[g * C + D2 + d];
        }
      }
    }
  }

 private:
  static void add_into(T* dst, const T* src, int64_t n) {
#pragma omp simd
    for (int64_t x = 0; x < n; ++x) dst[x] += src[x];
  }

  uint64_t row_id(int64_t b, int64_t i, int64_t v, int64_t g) const {
    return static_cast<uint64_t>(((b * hw_ + i) * p_.v + v) * p_.g + g);
  }

  // The valid keys of query i as segments of consecutive pixels; sets keys_.
  void build_segments(int64_t i) {
    const int64_t row = i / p_.width, col = i % p_.width;
    segments_.clear();
    int64_t start = 0;
    if (p_.local) {
      const int64_t r = p_.patch / 2;
      const int64_t b0 = std::max<int64_t>(0, r - col), b1 = std::min<int64_t>(p_.patch, p_.width + r - col);
      for (int64_t a = 0; a < p_.patch; ++a) {
        const int64_t key_row = row + a - r;
        if (key_row < 0 || key_row >= p_.height || b1 <= b0) continue;
        segments_.push_back({key_row * p_.width + col + b0 - r, a * p_.patch + b0, b1 - b0, start});
        start += b1 - b0;
      }
    } else {
      const int64_t r = p_.radius, side = 2 * r + 1;
      for (int64_t key_row = 0; key_row < p_.height; ++key_row) {
        segments_.push_back({key_row * p_.width, (key_row - row + r) * side + (r - col), p_.width, start});
        start += p_.width;
      }
    }
    keys_ = start;
  }

  // ---------------------------------------------------------------- contractions
  // Two layouts of keys, values and the offset table. Channel-major (C, HW, M) and
  // (V, D2, T): the keys of a query are gathered into rows of X = K M entries, long for
  // few channels and many keys (global layers, small widths). Pixel-major (HW, M, C) and
  // (V, T, D2): every segment of keys is one contiguous block, nothing is gathered and the
  // contractions run along C (local layers with many channels).

  // (C, X) rows of keys or values seen by the query (channel-major): gathered for local
  // layers; global layers see every key, so the head-batch's block is used in place.
  const T* gather(const T* block, std::vector<T>& buffer) {
    if (!p_.local) {
      stride_ = hw_ * M;
      return block;
    }
    const int64_t X = keys_ * M;
    stride_ = X;
    for (int64_t ch = 0; ch < p_.c; ++ch) {
      const T* column = block + ch * hw_ * M;
      T* dst = buffer.data() + ch * X;
      for (const Segment& s : segments_) std::copy_n(column + s.key * M, s.length * M, dst + s.start * M);
    }
    return buffer.data();
  }

  // A query of a local layer whose whole neighbourhood lies inside the image sees the whole
  // offset table, in its order.
  bool whole_table() const { return p_.local && keys_ == table_; }

  // The (V, D2, K) offset-table entries of the query's keys (channel-major); sets table_stride_.
  const T* gather_table() {
    if (whole_table()) {
      table_stride_ = table_;
      return pos_;
    }
    const int64_t K = keys_;
    table_stride_ = K;
    for (int64_t row = 0; row < p_.v * p_.d2; ++row) {
      const T* src = pos_ + row * table_;
      T* dst = pos_buf_.data() + row * K;
      for (const Segment& s : segments_) std::copy_n(src + s.pos, s.length, dst + s.start);
    }
    return pos_buf_.data();
  }

  const T* block(const T* base, int64_t b) const { return base + b * p_.c * hw_ * M; }

  // Pixel-major rows (length M, C) of segment s in a head-batch's (HW, M, C) block.
  const T* rows(const T* base, int64_t b, const Segment& s) const { return block(base, b) + s.key * M * p_.c; }

  // c (G, X) = q (G, C) keys^T and pl (V, G, K) = q_pos (G, D2) E_v^T.
  void logit_terms(int64_t b, const T* qi) {
    const int64_t G = p_.g, V = p_.v, C = p_.c, D2 = p_.d2, K = keys_, X = K * M;
    if (p_.pixel_major) {
      for (const Segment& s : segments_) {
        gemm_nt(G, s.length * M, C, qi, C, rows(kc_, b, s), C, c_.data() + s.start * M, X, false);
        for (int64_t v = 0; v < V; ++v)
          gemm_nt(G, s.length, D2, qi, C, pos_ + (v * table_ + s.pos) * D2, D2, pl_.data() + v * G * K + s.start, K,
                  false);
      }
      return;
    }
    const T* keys = gather(block(kc_, b), keys_buf_);
    gemm_nn(G, C, X, qi, C, int64_t(1), keys, stride_, c_.data(), X, false);
    const T* table = gather_table();
    for (int64_t v = 0; v < V; ++v)
      gemm_nn(G, D2, K, qi, C, int64_t(1), table + v * D2 * table_stride_, table_stride_, pl_.data() + v * G * K, K,
              false);
  }

  // out (V, C) = P_sum (V, X) values, P_sum in sum_.
  void value_output(int64_t b, T* out) {
    const int64_t V = p_.v, C = p_.c, X = keys_ * M;
    if (p_.pixel_major) {
      bool first = true;
      for (const Segment& s : segments_) {
        gemm_nn(V, s.length * M, C, sum_.data() + s.start * M, X, int64_t(1), rows(vc_, b, s), C, out, C, !first);
        first = false;
      }
      return;
    }
    const T* values = gather(block(vc_, b), values_buf_);
    gemm_nt(V, C, X, sum_.data(), X, values, stride_, out, C, false);
  }

  // dpd_ (V, X) = grad_out (V, C) values^T: the gradient of the probabilities before dropout.
  void value_side_probabilities(int64_t b, const T* grad_out) {
    const int64_t V = p_.v, C = p_.c, X = keys_ * M;
    if (p_.pixel_major) {
      for (const Segment& s : segments_)
        gemm_nt(V, s.length * M, C, grad_out, C, rows(vc_, b, s), C, dpd_.data() + s.start * M, X, false);
      return;
    }
    const T* values = gather(block(vc_, b), values_buf_);
    gemm_nn(V, C, X, grad_out, C, int64_t(1), values, stride_, dpd_.data(), X, false);
  }

  // Adds A^T W into the keys' gradient block of head-batch b, with A (R, C) and W (R, X) by rows.
  void key_side_gradient(int64_t b, const T* A, int64_t R, const T* W, T* grad_block, std::vector<T>& buffer) {
    const int64_t C = p_.c, X = keys_ * M;
    if (p_.pixel_major) {  // (length M, C) += W_s^T (length M, R) A (R, C), in place
      for (const Segment& s : segments_)
        gemm_nn(s.length * M, R, C, W + s.start * M, int64_t(1), X, A, C, grad_block + s.key * M * C, C, true);
      return;
    }
    if (!p_.local) {
      gemm_nn(C, R, X, A, int64_t(1), C, W, X, grad_block, hw_ * M, true);
      return;
    }
    buffer.resize(C * X);
    gemm_nn(C, R, X, A, int64_t(1), C, W, X, buffer.data(), X, false);
    for (int64_t ch = 0; ch < C; ++ch) {
      T* column = grad_block + ch * hw_ * M;
      const T* src = buffer.data() + ch * X;
      for (const Segment& s : segments_) add_into(column + s.key * M, src + s.start * M, s.length * M);
    }
  }

  // grad_q (G, C) = dS_content (G, X) keys + sum_v dS_pos,v (G, K) E_v (first D2 channels).
  void query_gradient(int64_t b, T* grad_q) {
    const int64_t G = p_.g, V = p_.v, C = p_.c, D2 = p_.d2, K = keys_, X = K * M;
    if (p_.pixel_major) {
      std::fill(grad_q, grad_q + G * C, T(0));
      for (const Segment& s : segments_) {
        gemm_nn(G, s.length * M, C, gc_.data() + s.start * M, X, int64_t(1), rows(kc_, b, s), C, grad_q, C, true);
        for (int64_t v = 0; v < V; ++v)
          gemm_nn(G, s.length, D2, gpl_.data() + v * G * K + s.start, K, int64_t(1),
                  pos_ + (v * table_ + s.pos) * D2, D2, grad_q, C, true);
      }
      return;
    }
    const T* keys = p_.local ? keys_buf_.data() : block(kc_, b);
    gemm_nt(G, C, X, gc_.data(), X, keys, stride_, grad_q, C, false);
    const T* table = whole_table() ? pos_ : pos_buf_.data();
    for (int64_t v = 0; v < V; ++v)
      gemm_nt(G, D2, K, gpl_.data() + v * G * K, K, table + v * D2 * table_stride_, table_stride_, grad_q, C, true);
  }

  // Adds q_pos^T dS_pos,v into the offset table's gradient for every v.
  void positional_gradient(const T* qi, T* grad_pos) {
    const int64_t G = p_.g, V = p_.v, C = p_.c, D2 = p_.d2, K = keys_;
    if (p_.pixel_major) {  // (length, D2) += dS_pos,v^T (length, G) q_pos (G, D2)
      for (int64_t v = 0; v < V; ++v)
        for (const Segment& s : segments_)
          gemm_nn(s.length, G, D2, gpl_.data() + v * G * K + s.start, int64_t(1), K, qi, C,
                  grad_pos + (v * table_ + s.pos) * D2, D2, true);
      return;
    }
    if (whole_table()) {  // (D2, T) += q_pos^T (D2, G) dS_pos,v (G, T), in place
      for (int64_t v = 0; v < V; ++v)
        gemm_nn(D2, G, K, qi, int64_t(1), C, gpl_.data() + v * G * K, K, grad_pos + v * D2 * table_, table_, true);
      return;
    }
    gp_.resize(V * D2 * K);  // (D2, K) = q_pos^T (D2, G) dS_pos,v (G, K), then into the table
    for (int64_t v = 0; v < V; ++v)
      gemm_nn(D2, G, K, qi, int64_t(1), C, gpl_.data() + v * G * K, K, gp_.data() + v * D2 * K, K, false);
    for (int64_t row = 0; row < V * D2; ++row) {
      const T* src = gp_.data() + row * K;
      T* dst = grad_pos + row * table_;
      for (const Segment& s : segments_) add_into(dst + s.pos, src + s.start, s.length);
    }
  }

  // The three logit terms of query i, their maxima and factored exponentials.
  void scores(int64_t b, int64_t i) {
    build_segments(i);
    const int64_t G = p_.g, V = p_.v, C = p_.c, D2 = p_.d2, Dg = p_.dg, K = keys_, X = K * M;
    const T* qi = q_ + (b * hw_ + i) * G * C;
    logit_terms(b, qi);
    for (int64_t g = 0; g < G; ++g) {
      T* c = c_.data() + g * X;
      cmax_[g] = max_of(c, X);
      exp_shifted(ec_.data() + g * X, c, cmax_[g], X);
    }
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t vg = v * G + g;
        T* pl = pl_.data() + vg * K;
        pmax_[vg] = max_of(pl, K);
        exp_shifted(ep_.data() + vg * K, pl, pmax_[vg], K);
        T* gl = gl_.data() + vg * M;
        for (int m = 0; m < M; ++m) {
          T acc = 0;
          if (grp_ != nullptr) {
            const T* emb = grp_ + (vg * M + m) * Dg;
            for (int64_t d = 0; d < Dg; ++d) acc += qi[g * C + D2 + d] * emb[d];
          }
          gl[m] = acc;
        }
        gmax_[vg] = max_of(gl, M);
        exp_shifted(eg_.data() + vg * M, gl, gmax_[vg], M);
      }
    }
  }

  static void exp_shifted(T* dst, const T* src, T shift, int64_t n) {
#pragma omp simd
    for (int64_t x = 0; x < n; ++x) dst[x] = exp_approx(src[x] - shift);
  }

  // out[k] = sum_m x[k, m] for a (K, M) row.
  static void sum_over_elements(const T* x, T* out, int64_t keys) {
#pragma omp simd
    for (int64_t k = 0; k < keys; ++k) {
      T acc = 0;
      for (int m = 0; m < M; ++m) acc += x[k * M + m];
      out[k] = acc;
    }
  }

  // out[m] = sum_k x[k, m] for a (K, M) row, summed in vectors of L entries (L a multiple of M).
  static void sum_over_keys(const T* x, T* out, int64_t keys) {
    constexpr int L = M == 12 ? 48 : 16;
    T acc[L];
    for (int j = 0; j < L; ++j) acc[j] = 0;
    const int64_t n = keys * M, whole = n - n % L;
    for (int64_t start = 0; start < whole; start += L) {
#pragma omp simd
      for (int j = 0; j < L; ++j) acc[j] += x[start + j];
    }
    for (int m = 0; m < M; ++m) out[m] = 0;
    for (int j = 0; j < L; ++j) out[j % M] += acc[j];
    for (int64_t j = whole; j < n; ++j) out[(j - whole) % M] += x[j];
  }

  static T sum_of(const T* x, int64_t n) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) acc += x[j];
    return acc;
  }

  static T max_of(const T* x, int64_t n) {
    T best = x[0];
#pragma omp simd reduction(max : best)
    for (int64_t j = 1; j < n; ++j) best = x[j] > best ? x[j] : best;
    return best;
  }

  // Fills row_ with the unnormalised probabilities of row (v, g) and returns the factor
  // that normalises them. Forward (lse_in null): stores the row's log-sum-exp in *lse_out.
  // Backward: normalises with the stored *lse_in, so both passes use the same numbers.
  T probabilities(int64_t v, int64_t g, const T* lse_in, T* lse_out) {
    const int64_t K = keys_, X = K * M, vg = v * p_.g + g;
    const T* ec = ec_.data() + g * X;
    const T* ep = ep_.data() + vg * K;
    const T* eg = eg_.data() + vg * M;
    T* e = row_.data();
    const T base = cmax_[g] + pmax_[vg] + gmax_[vg];
    T weights[M];
    for (int m = 0; m < M; ++m) weights[m] = eg[m];
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
      const T a = ep[k];
      for (int m = 0; m < M; ++m) e[k * M + m] = ec[k * M + m] * a * weights[m];
    }
    T total = sum_of(e, X);
    // Direct evaluation when the factored sum underflows: decided by the forward pass's sum,
    // and in the backward pass by the same quantity recovered from the stored log-sum-exp.
    const bool direct = lse_in ? (*lse_in - base) < T(std::log(Limits<T>::tiny)) : !(total >= T(Limits<T>::tiny));
    if (direct) {
      const T* c = c_.data() + g * X;
      const T* pl = pl_.data() + vg * K;
      const T* gl = gl_.data() + vg * M;
      T best = c[0] + pl[0] + gl[0];
      for (int64_t k = 0; k < K; ++k)
        for (int m = 0; m < M; ++m) best = std::max(best, c[k * M + m] + pl[k] + gl[m]);
      total = 0;
      for (int64_t k = 0; k < K; ++k) {
        for (int m = 0; m < M; ++m) {
          const T value = exp_approx(c[k * M + m] + pl[k] + gl[m] - best);
          e[k * M + m] = value;
          total += value;
        }
      }
      if (lse_in) return std::exp(best - *lse_in);
      *lse_out = best + std::log(total);
      return T(1) / total;
    }
    if (lse_in) return std::exp(base - *lse_in);
    *lse_out = base + std::log(total);
    return T(1) / total;
  }

  const Problem& p_;
  const T *q_, *kc_, *vc_, *pos_, *grp_;
  int64_t hw_ = 0, table_ = 0, keys_ = 0, stride_ = 0, table_stride_ = 0;
  std::vector<Segment> segments_;
  std::vector<T> keys_buf_, values_buf_, pos_buf_;
  std::vector<T> c_, ec_, pl_, ep_, gl_, eg_, cmax_, pmax_, gmax_, row_, prob_, sum_;
  std::vector<T> dpd_, gc_, gpl_, ggl_, gk_, gv_, gp_;
};

// The OpenMP runtime's entry for a parallel region (the GOMP ABI that compilers emit for `omp
// parallel`: fn(data) on a team of num_threads threads), set by fused_use_openmp to the runtime
// that torch's CPU operations run on. The kernel's tasks then run on torch's own threads: with
// threads of its own, the kernel would share the cores with torch's threads, which spin for a
// while after each operation (OpenMP's default wait policy) on the cores the kernel needs.
// Null: the kernel starts threads of its own.
using OpenMPParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
OpenMPParallel openmp_parallel = nullptr;

template <typename F>
void call_body(void* body) {
  (*static_cast<F*>(body))();
}

// Runs task(thread, task_index) for task_index in [0, count) on `threads` threads. Dynamic:
// each thread takes the next task from a counter (a descheduled thread delays only its own
// task). Static: thread t runs the t-th contiguous share of the tasks, in order, so that
// what each thread accumulates, and in which order, does not depend on timing. The team's
// threads take the thread indices t from a counter, so a team with fewer threads than asked
// for (inside another parallel region, or under a thread limit) still runs every share.
template <typename F>
void parallel_tasks(int64_t threads, int64_t count, bool dynamic, F task) {
  threads = std::max<int64_t>(1, std::min(threads, count));
  std::atomic<int64_t> next(0), slot(0);
  auto run = [&](int64_t thread) {
    if (!dynamic) {
      for (int64_t t = thread * count / threads; t < (thread + 1) * count / threads; ++t) task(thread, t);
      return;
    }
    for (int64_t t = next.fetch_add(1); t < count; t = next.fetch_add(1)) task(thread, t);
  };
  auto member = [&]() {
    for (int64_t t = slot.fetch_add(1); t < threads; t = slot.fetch_add(1)) run(t);
  };
  if (threads == 1) {
    run(0);
  } else if (openmp_parallel != nullptr) {
    openmp_parallel(&call_body<decltype(member)>, &member, static_cast<unsigned>(threads), 0);
  } else {
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(member);
    member();
    for (std::thread& t : pool) t.join();
  }
}

template <typename T, int M>
void forward_impl(const Problem& p, const T* q, const T* kc, const T* vc, const T* pos, const T* grp, T* out,
                  T* lse) {
  const int64_t hw = p.height * p.width, blocks = (hw + p.block - 1) / p.block;
  std::vector<Worker<T, M>*> workers(std::max<int64_t>(1, p.threads), nullptr);
  parallel_tasks(p.threads, p.bn * blocks, true, [&](int64_t thread, int64_t task) {
    if (!workers[thread]) workers[thread] = new Worker<T, M>(p, q, kc, vc, pos, grp);
    const int64_t b = task / blocks, first = (task % blocks) * p.block, last = std::min(hw, first + p.block);
    for (int64_t i = first; i < last; ++i)
      workers[thread]->forward(b, i, out + (b * hw + i) * p.v * p.c, lse + (b * hw + i) * p.v * p.g);
  });
  for (auto* w : workers) delete w;
}

template <typename T, int M>
void backward_impl(const Problem& p, const T* q, const T* kc, const T* vc, const T* pos, const T* grp,
                   const T* grad_out, const T* lse, T* grad_q, T* grad_kc, T* grad_vc, T* grad_pos, T* grad_grp) {
  const int64_t hw = p.height * p.width, blocks = (hw + p.block - 1) / p.block;
  const int64_t threads = std::max<int64_t>(1, p.threads);
  const int64_t side = p.local ? p.patch : 2 * p.radius + 1;
  const int64_t pos_size = p.v * p.d2 * side * side, grp_size = grp ? p.v * p.g * M * p.dg : 0;
  const int64_t kv_size = p.c * hw * M;  // one head-batch of grad_kc
  // A head-batch split into several tasks may be worked on by several threads at once, so
  // each thread then adds into a private copy of grad_kc and grad_vc; otherwise a task owns
  // its head-batch. The tables are shared by all head-batches: always private.
  const bool private_kv = blocks > 1;
  std::vector<std::vector<T>> pos_acc(threads), grp_acc(threads), k_acc(threads), v_acc(threads);
  std::vector<Worker<T, M>*> workers(threads, nullptr);
  // Static scheduling: the gradients are sums over queries, added up in the same order in every
  // call (deterministic results for a given number of threads).
  parallel_tasks(threads, p.bn * blocks, false, [&](int64_t thread, int64_t task) {
    if (!workers[thread]) {
      workers[thread] = new Worker<T, M>(p, q, kc, vc, pos, grp);
      pos_acc[thread].assign(pos_size, T(0));
      grp_acc[thread].assign(grp_size, T(0));
      if (private_kv) {
        k_acc[thread].assign(p.bn * kv_size, T(0));
        v_acc[thread].assign(p.bn * kv_size, T(0));
      }
    }
    const int64_t b = task / blocks, first = (task % blocks) * p.block, last = std::min(hw, first + p.block);
    T* gk = (private_kv ? k_acc[thread].data() : grad_kc) + b * kv_size;
    T* gv = (private_kv ? v_acc[thread].data() : grad_vc) + b * kv_size;
    for (int64_t i = first; i < last; ++i) {
      const int64_t row = b * hw + i;
      workers[thread]->backward(b, i, grad_out + row * p.v * p.c, lse + row * p.v * p.g, grad_q + row * p.g * p.c,
                                gk, gv, pos_acc[thread].data(), grp ? grp_acc[thread].data() : nullptr);
    }
  });
  for (int64_t t = 0; t < threads; ++t) {
    if (!workers[t]) continue;
    for (int64_t j = 0; j < pos_size; ++j) grad_pos[j] += pos_acc[t][j];
    for (int64_t j = 0; j < grp_size; ++j) grad_grp[j] += grp_acc[t][j];
    if (private_kv) {
      for (int64_t j = 0; j < p.bn * kv_size; ++j) grad_kc[j] += k_acc[t][j];
      for (int64_t j = 0; j < p.bn * kv_size; ++j) grad_vc[j] += v_acc[t][j];
    }
    delete workers[t];
  }
}

// ---------------------------------------------------------------- lanes: local layers at small widths
// For local layers with few channels per head the work per query is tiny (a few hundred
// multiply-adds), so the kernel runs the queries side by side instead: the vector lanes run
// along neighbouring query pixels, and every contraction is a sum of shifted, contiguous
// rows. The keys lie on a zero-padded grid of rows Wp = W + r long (r = P / 2 zero columns
// before each image row, r zero rows above and below): pixel (y, x) at position (y + r) Wp +
// x + r. Lane j stands for the query at (y, x) = (j / Wp, j % Wp), and its key at patch offset
// (a, b) sits at position j + a Wp + b, for every lane alike: each offset is one shift (a key
// past the right edge of its row lands in the zero columns that begin the next row). Lanes
// with x >= W (and those past H Wp that fill the last tile) are padding; their
// queries are zero and they take no gradient (the caller discards their outputs), so they
// cost time but never change a result.
//
// Layouts (row-major, contiguous), L lanes (a multiple of LANES), LK = L + (P - 1) Wp + P - 1:
//   ql         (BN, G, C, L)    queries, already divided by sqrt(C_in); zero on padding lanes
//   kl, vl     (BN, M, C, LK)   keys and values on the padded grid (zero outside the image)
//   bias       (LK)             0 inside the image, -BIG outside: keys outside get no weight
//   pos        (V, T, D2)       T = P P, offset (a, b) at t = a P + b; or (N, V, T, D2), one
//                               table per head (pos_heads = N; the head of head-batch b is b mod N);
//                               with perm, U base tables: (U T, D2) or (N, U T, D2)
//   perm       (V, T) or null   the table of v is the rows perm[v, t] of the U T rows of the base
//                               tables (all in one base table: the one of v)
//   grp        (V, G, M, Dg)    absent for lifting layers
//   out        (BN, V, C, L)
//   lse        (BN, V, G, L)
// A tile is LANES consecutive lanes, held as one vector (Vec); all its logits (G T M vectors)
// stay in the caches. Group layers (M > 1) factor the exponentials as the one-query layouts do,
// exp(c + pl + gl - max) = exp(c - max c) exp(pl - max pl) exp(gl - max gl): G T M exponentials
// of the content logits per tile, shared by every v, and V G (T + M) of the other two terms,
// instead of V G T M; a tile in which a lane's factored sum underflows is recomputed directly.
// Without dropout, the forward pass then sums the probabilities of output element v over g from
// their factors, block by block of key elements in registers (mix_rows).
// Where the tables of the V output elements are permutations of U < V base tables (perm: the
// elements v and v u have permuted tables when u maps the offsets of the patch onto the patch, so
// U = 1 for p4 and p4m, 2 for p8, 3 for p12), the positional logits and their exponentials are
// computed once per tile and g for the base tables and read through the permutation for every v
// (U T instead of V T of each), the exponentials of layers with one key element then factor as
// well, and the gradient of the base tables is gathered over v before it is contracted. Otherwise layers with one key element exponentiate their logits directly. Dropout
// entry (t M + m) of a row is kept or dropped by the same hash of (seed, row, entry) as in the
// other layouts, the row being that of the query's pixel (the same entries where the query's patch
// lies inside the image; at the border the one-query layouts number only the keys inside it).

// A tile: one vector register of float32. AVX-512's 16 lanes where the compiler targets it (its 32
// registers hold a tile's block sums); otherwise AVX2's 8 (16 lanes in 16 AVX2 registers spill:
// steps 3x slower).
#if defined(__AVX512F__)
constexpr int LANES = 16;
#else
constexpr int LANES = 8;
#endif

template <typename T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(LANES * sizeof(float)))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(LANES * sizeof(double)))); };
template <typename T>
using Vec = typename VecOf<T>::type;  // LANES values of T, operated on as one

// The dropout keys of a tile's softmax rows, one per lane, as the two halves that dropout_hash mixes in.
typedef uint32_t Lanes32 __attribute__((vector_size(LANES * sizeof(uint32_t))));
struct RowKeys {
  Lanes32 lo, hi;
};

template <typename T>
inline Vec<T> splat(T x) {
  return Vec<T>{} + x;
}

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename V>
inline V vmax(const V& a, const V& b) {
  return a > b ? a : b;
}

template <typename V>
inline auto sum_lanes(const V& x) {
  auto total = x[0];
  for (int l = 1; l < LANES; ++l) total += x[l];
  return total;
}

// x[k] = exp(x[k]) in every lane of K float32 vectors, as exp_approx does for one float. Each step
// is taken for all K before the next: the steps of one exp form a long chain of dependent
// operations, and K independent chains side by side in program order let the core overlap them.
template <int K>
inline void exp_lanes_k(Vec<float>* x) {
  using I = decltype(x[0] < x[0]);  // int32 lanes
  const Vec<float> shifter = splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  Vec<float> n[K], r[K], p[K];
  for (int k = 0; k < K; ++k) {
    r[k] = vmax(x[k] < 88.0f ? x[k] : splat(88.0f), splat(-87.0f));
    n[k] = (r[k] * 1.44269504088896341f + shifter) - shifter;
  }
  for (int k = 0; k < K; ++k) r[k] = (r[k] - n[k] * kLn2Hi) - n[k] * kLn2Lo;
  for (int k = 0; k < K; ++k) p[k] = splat(kExpCoefficients[0]);
  for (int i = 1; i < 8; ++i)
    for (int k = 0; k < K; ++k) p[k] = p[k] * r[k] + kExpCoefficients[i];
  for (int k = 0; k < K; ++k) {
    const I bits = (__builtin_convertvector(n[k], I) + 127) << 23;
    Vec<float> scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    const Vec<float> result = x[k] < -87.0f ? Vec<float>{} : p[k] * scale;
    x[k] = x[k] != x[k] ? x[k] : result;
  }
}

// exp of every lane: float32 as exp_approx (vectorised), float64 lane by lane.
inline Vec<float> exp_lanes(Vec<float> x) {
  exp_lanes_k<1>(&x);
  return x;
}

inline Vec<double> exp_lanes(Vec<double> x) {
  for (int l = 0; l < LANES; ++l) x[l] = std::exp(x[l]);
  return x;
}

// dst[x] = exp(src[x] - shift) for x < n, vectors of lanes (dst may be src; exp_shifted of the
// one-query layouts for scalars); float32 four vectors at a time (see exp_lanes_k).
template <typename V>
inline void exp_lanes_shifted(V* dst, const V* src, const V& shift, int64_t n) {
  int64_t x = 0;
  if constexpr (std::is_same_v<V, Vec<float>>) {
    constexpr int K = 4;
    for (; x + K <= n; x += K) {
      V block[K];
      for (int k = 0; k < K; ++k) block[k] = src[x + k] - shift;
      exp_lanes_k<K>(block);
      for (int k = 0; k < K; ++k) dst[x + k] = block[k];
    }
  }
  for (; x < n; ++x) dst[x] = exp_lanes(src[x] - shift);
}

// Whether the comparison vector `mask` (all bits set where true) is true in any lane.
template <typename M>
inline bool any_lane(const M& mask) {
  for (int l = 0; l < LANES; ++l)
    if (mask[l]) return true;
  return false;
}

template <typename V>
inline V log_lanes(V x) {
  for (int l = 0; l < LANES; ++l) x[l] = std::log(x[l]);
  return x;
}

// Calls body(std::true_type) where `dropout`, else body(std::false_type): a loop written once
// with `if constexpr` for both.
template <typename F>
inline void with_dropout(bool dropout, F body) {
  if (dropout) {
    body(std::true_type());
  } else {
    body(std::false_type());
  }
}

// Calls body(nb, i) for i = 0, nb, ... over [0, n), in blocks of nb = B, then B / 2, ..., 1 (a
// compile-time constant), so that the body can keep nb independent accumulators in registers.
template <int B, typename F>
inline void in_blocks_of(int64_t n, F body) {
  int64_t i = 0;
  for (; i + B <= n; i += B) body(std::integral_constant<int, B>(), i);
  if constexpr (B > 1) in_blocks_of<B / 2>(n - i, [&](auto nb, int64_t j) { body(nb, i + j); });
}

template <typename F>
inline void in_blocks(int64_t n, F body) {
  in_blocks_of<8>(n, body);
}

// sum_{i < n} term(i) in four interleaved partial sums (four independent addition chains).
template <typename V, typename F>
inline V reduce(int64_t n, F term) {
  V s0{}, s1{}, s2{}, s3{};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += term(i);
    s1 += term(i + 1);
    s2 += term(i + 2);
    s3 += term(i + 3);
  }
  for (; i < n; ++i) s0 += term(i);
  return (s0 + s1) + (s2 + s3);
}

template <typename T>
class LaneWorker {
 public:
  using V = Vec<T>;

  LaneWorker(const Problem& p, const T* q, const T* k, const T* v, const T* bias, const T* pos, const int64_t* perm,
             const T* grp)
      : p_(p), q_(q), k_(k), v_(v), bias_(bias), pos_(pos), perm_(perm), grp_(grp) {
    G_ = p.g; M_ = p.m; V_ = p.v; C_ = p.c; D2_ = p.d2; Dg_ = p.dg;
    T_ = p.patch * p.patch;
    L_ = p.lanes;
    LK_ = p.key_lanes;
    offsets_.resize(T_);
    for (int64_t a = 0; a < p.patch; ++a)
      for (int64_t b = 0; b < p.patch; ++b) offsets_[a * p.patch + b] = a * p.padded_width + b;
    for (int64_t b = 0; b < p.patch; ++b)
      for (int64_t a = 0; a < p.patch; ++a) scatter_order_.push_back(a * p.patch + b);
    shared_ = perm_ != nullptr;
    factored_ = grp_ != nullptr || shared_;
    c_.resize(G_ * T_ * M_);
    if (factored_) {
      cmax_.resize(G_);
      ep_.resize(T_);
      eg_.assign(M_, splat(T(1)));
      rows_t_.resize(G_ * T_);
      rows_m_.resize(G_ * M_);
    }
    if (shared_) {
      U_ = p.pos_bases;
      R_ = U_ * T_;
      P_.resize(G_ * R_);
      EP_.resize(G_ * R_);
      PM_.resize(G_ * U_);
      DP_.resize(G_ * R_);
      inside_.resize(T_);
    }
    e_.resize(T_ * M_);
    acc_.resize(T_ * M_);
    dpre_.resize(T_ * M_);
    dsum_.resize(V_ * T_ * M_);
    dpm_.resize(T_ * M_);
    kept_.resize(T_ * M_);
    pl_.resize(T_);
    gl_.resize(M_);
  }

  // out (V, C, tile) and lse (V, G, tile) of the tile at lane j0 of head-batch b.
  void forward(int64_t b, int64_t j0, T* out, T* lse) {
    {
      PHASE(forward_content);
      content(b, j0);
    }
    for (int64_t v = 0; v < V_; ++v) {
      V* psum = acc_.data();  // (T, M): the probabilities of output element v summed over g (after dropout)
      {
        PHASE(forward_rows);
        if (factored_ && !p_.dropout && factored_rows(b, j0, v, lse)) {
          mix_rows(psum);
        } else {
          sum_rows(b, j0, v, lse, psum);
        }
      }
      // out[v, c] = sum_{t, m} psum[t, m] val[m, c] (shifted by the offset of t).
      PHASE(forward_out);
      in_blocks(C_, [&](auto nb, int64_t c0) {
        constexpr int NB = decltype(nb)::value;
        V o[NB] = {};
        for (int64_t t = 0; t < T_; ++t)
          for (int64_t m = 0; m < M_; ++m) {
            const V w = psum[t * M_ + m];
            const T* val = row(v_, b, m, c0) + j0 + offsets_[t];
            for (int i = 0; i < NB; ++i) o[i] += w * load(val + i * LK_);
          }
        for (int i = 0; i < NB; ++i) store(out + (v * C_ + c0 + i) * L_ + j0, o[i]);
      });
    }
  }

  // psum (T, M) = the probabilities of the rows (v, g) of the tile summed over g, after dropout, row by
  // row (any row: factored or not, with or without dropout); stores each row's log-sum-exp in lse.
  void sum_rows(int64_t b, int64_t j0, int64_t v, T* lse, V* psum) {
    const int64_t TM = T_ * M_;
    std::fill(psum, psum + TM, V{});
    for (int64_t g = 0; g < G_; ++g) {
      V total, base;
      const bool factored = factored_ && factored_sum(b, j0, v, g, &total, &base);
      if (!factored) {
        base = logits(b, j0, v, g);
        total = reduce<V>(TM, [&](int64_t x) { return e_[x] = exp_lanes(e_[x] - base); });
      }
      store(lse + (v * G_ + g) * L_ + j0, base + log_lanes(total));
      V norm = T(1) / total;
      RowKeys keys{};
      if (p_.dropout) {
        keys = row_keys(b, j0, v, g);
        norm = norm * static_cast<T>(p_.keep_scale);
      }
      // psum += the row's probabilities (after dropout), factored or as stored in e_.
      auto add = [&](auto dropout, auto prob) {
        for (int64_t t = 0; t < T_; ++t)
          for (int64_t m = 0; m < M_; ++m) {
            const int64_t x = t * M_ + m;
            if constexpr (decltype(dropout)::value) {
              psum[x] += prob(t, m, x) * mask(keys, x);
            } else {
              psum[x] += prob(t, m, x);
            }
          }
      };
      if (factored) {
        for (int64_t t = 0; t < T_; ++t) ep_[t] *= norm;
        with_dropout(p_.dropout, [&](auto dropout) { add(dropout, factored_entries(g)); });
      } else {
        with_dropout(p_.dropout, [&](auto dropout) {
          add(dropout, [&](int64_t, int64_t, int64_t x) { return e_[x] * norm; });
        });
      }
    }
  }

  // The factors of all G rows (v, g) of the tile, normalised: rows_t_ (G, T) = ep_ / total and rows_m_
  // (G, M) = eg_, so that probability (g, t, m) is c_[g, t, m] rows_t_[g, t] rows_m_[g, m]; stores each
  // row's log-sum-exp in lse. False where a row does not factor (see factored_sum).
  bool factored_rows(int64_t b, int64_t j0, int64_t v, T* lse) {
    for (int64_t g = 0; g < G_; ++g) {
      V total, base;
      if (!factored_sum(b, j0, v, g, &total, &base)) return false;
      store(lse + (v * G_ + g) * L_ + j0, base + log_lanes(total));
      const V norm = T(1) / total;
      for (int64_t t = 0; t < T_; ++t) rows_t_[g * T_ + t] = ep_[t] * norm;
      std::copy(eg_.begin(), eg_.end(), rows_m_.begin() + g * M_);
    }
    return true;
  }

  // psum (T, M) = sum_g c_[g, t, m] rows_t_[g, t] rows_m_[g, m] (see factored_rows): for each
  // offset t, a block of up to 8 key elements m summed over g in registers, so that psum is written
  // once instead of once per g.
  void mix_rows(V* psum) const {
    const int64_t TM = T_ * M_;
    for (int64_t t = 0; t < T_; ++t)
      in_blocks(M_, [&](auto mb, int64_t m0) {
        constexpr int MB = decltype(mb)::value;
        V acc[MB] = {};
        for (int64_t g = 0; g < G_; ++g) {
          const V a = rows_t_[g * T_ + t];
          const V* ec = c_.data() + g * TM + t * M_ + m0;
          const V* em = rows_m_.data() + g * M_ + m0;
          for (int i = 0; i < MB; ++i) acc[i] += ec[i] * (a * em[i]);
        }
        for (int i = 0; i < MB; ++i) psum[t * M_ + m0 + i] = acc[i];
      });
  }

  // Gradients of the tile at lane j0 of head-batch b: writes grad_q (G, C, tile); adds into
  // grad_k and grad_v (this head-batch's (M, C, LK) blocks) and into the lane accumulators
  // of the tables, pos_acc (V, T, D2) and grp_acc (V, G, M, Dg).
  void backward(int64_t b, int64_t j0, const T* grad_out, const T* lse, T* grad_q, T* grad_k, T* grad_v,
                V* pos_acc, V* grp_acc) {
    {
      PHASE(backward_content);
      content(b, j0);
    }
    const int64_t TM = T_ * M_;
    dc_.assign(G_ * TM, V{});
    gq_.assign(G_ * C_, V{});
    if (shared_) std::fill(DP_.begin(), DP_.end(), V{});
    for (int64_t v = 0; v < V_; ++v) {
      const T* gout = grad_out + v * C_ * L_ + j0;  // row c at gout + c L
      // dP before dropout: dpre[t, m] = sum_c grad_out[v, c] val[m, c] (shifted).
      {
        PHASE(backward_dp);
        for (int64_t m = 0; m < M_; ++m)
          in_blocks(T_, [&](auto nb, int64_t t0) {
            constexpr int NB = decltype(nb)::value;
            V d[NB] = {};
            for (int64_t ch = 0; ch < C_; ++ch) {
              const V go = load(gout + ch * L_);
              const T* val = row(v_, b, m, ch) + j0;
              for (int i = 0; i < NB; ++i) d[i] += go * load(val + offsets_[t0 + i]);
            }
            for (int i = 0; i < NB; ++i) dpre_[(t0 + i) * M_ + m] = d[i];
          });
      }
      V* dsum = dsum_.data() + v * TM;  // (T, M): the probabilities after dropout summed over g
      std::fill(dsum, dsum + TM, V{});
      for (int64_t g = 0; g < G_; ++g) {
        const V lse_row = load(lse + (v * G_ + g) * L_ + j0);
        // The forward pass's choice, recovered from the stored log-sum-exp: factored unless
        // its factored sum underflowed in a lane (it was exp(lse - base)).
        bool factored;
        {
          PHASE(backward_factors);
          factored = factored_ && scaled_factors(b, j0, v, g, lse_row);
          if (!factored) direct_probabilities(b, j0, v, g, lse_row);
        }
        {
          PHASE(backward_rows);
          const V* dp = dpre_.data();
          if (p_.dropout) {
            const RowKeys keys = row_keys(b, j0, v, g);
            const T keep = static_cast<T>(p_.keep_scale);
            for (int64_t x = 0; x < TM; ++x) {
              kept_[x] = mask(keys, x) * keep;
              dpm_[x] = kept_[x] * dpre_[x];
            }
            dp = dpm_.data();
          }
          V* dc = dc_.data() + g * TM;
          with_dropout(p_.dropout, [&](auto dropout) {
            if (factored) {
              row_gradient(dropout, factored_entries(g), dp, dsum, dc);
            } else {
              row_gradient(dropout, [&](int64_t, int64_t, int64_t x) { return e_[x]; }, dp, dsum, dc);
            }
          });
        }
        PHASE(backward_tables);
        positional_gradient(b, j0, v, g, pos_acc);
        if (grp_ != nullptr) group_gradient(b, j0, v, g, grp_acc);
      }
    }
    {
      PHASE(backward_tables);
      if (shared_) shared_positional_gradient(b, j0, pos_acc);
    }
    {
      PHASE(backward_grad_v);
      // grad_v[m, c] (shifted) += sum_v dsum[v, t, m] grad_out[v, c].
      add_shifted(V_, dsum_.data(), grad_out + j0, grad_v, j0);
    }
    // Content: grad_q[g, c] += sum_{t, m} dC[g, t, m] k[m, c] (shifted); grad_k[m, c] (shifted)
    // += sum_g dC[g, t, m] q[g, c].
    {
      PHASE(backward_grad_q_content);
      for (int64_t g = 0; g < G_; ++g)
        for (int64_t ch = 0; ch < C_; ++ch) {
          const V* dc = dc_.data() + g * TM;
          gq_[g * C_ + ch] += reduce<V>(M_, [&](int64_t m) {
            const T* key = row(k_, b, m, ch) + j0;
            return reduce<V>(T_, [&](int64_t t) { return dc[t * M_ + m] * load(key + offsets_[t]); });
          });
        }
    }
    PHASE(backward_grad_k);
    add_shifted(G_, dc_.data(), query_row(b, 0, 0) + j0, grad_k, j0);
    for (int64_t gc = 0; gc < G_ * C_; ++gc) store(grad_q + gc * L_ + j0, gq_[gc]);
  }

 private:
  const T* row(const T* base, int64_t b, int64_t m, int64_t ch) const { return base + ((b * M_ + m) * C_ + ch) * LK_; }
  const T* query_row(int64_t b, int64_t g, int64_t ch) const { return q_ + ((b * G_ + g) * C_ + ch) * L_; }
  // The positional table of head-batch b, (V, T, D2).
  const T* pos_table(int64_t b) const { return pos_ + (b % p_.pos_heads) * (shared_ ? R_ : V_ * T_) * D2_; }
  // Row (m, c) of a head-batch's (M, C, LK) block of the key or value gradient.
  T* grad_row(T* block, int64_t m, int64_t ch) const { return block + (m * C_ + ch) * LK_; }
  // block[m, c] (M, C, LK), at lanes j0 + offset of t, += sum_{x < X} w[x, t, m] src[x, c], for the
  // key and value gradients: w (X, T, M) vectors; src[x, c] the tile's vector at src + (x C + c) L.
  // The offsets are walked column by column (scatter_order_): the rows of neighbouring offsets
  // overlap, and a store still in flight cannot be forwarded to an overlapping load. Blocks of
  // channels keep independent sums in registers (a sum over x alone is a chain of X dependent
  // multiply-adds).
  void add_shifted(int64_t X, const V* w, const T* src, T* block, int64_t j0) const {
    for (const int64_t t : scatter_order_)
      for (int64_t m = 0; m < M_; ++m)
        in_blocks(C_, [&](auto nb, int64_t c0) {
          constexpr int NB = decltype(nb)::value;
          V sum[NB] = {};
          for (int64_t x = 0; x < X; ++x) {
            const V wx = w[(x * T_ + t) * M_ + m];
            const T* rows = src + (x * C_ + c0) * L_;
            for (int i = 0; i < NB; ++i) sum[i] += wx * load(rows + i * L_);
          }
          T* dst = grad_row(block, m, c0) + j0 + offsets_[t];
          for (int i = 0; i < NB; ++i) store(dst + i * LK_, load(dst + i * LK_) + sum[i]);
        });
  }

  // c (count, T, M): the content logits of query elements g0 .. g0 + count - 1 of the tile, the
  // same for every v. Each shifted key vector is loaded once for a block of up to 4 of them (the
  // shifted loads are unaligned; the queries' are aligned).
  void content_logits(int64_t b, int64_t j0, int64_t g0, int64_t count, V* c) {
    const int64_t TM = T_ * M_;
    in_blocks_of<4>(count, [&](auto gb, int64_t gi) {
      constexpr int GB = decltype(gb)::value;
      for (int64_t m = 0; m < M_; ++m)
        in_blocks_of<2>(T_, [&](auto nb, int64_t t0) {
          constexpr int NB = decltype(nb)::value;
          V acc[GB][NB] = {};
          for (int64_t ch = 0; ch < C_; ++ch) {
            const T* key = row(k_, b, m, ch) + j0;
            V kv[NB];
            for (int i = 0; i < NB; ++i) kv[i] = load(key + offsets_[t0 + i]);
            for (int j = 0; j < GB; ++j) {
              const V qv = load(query_row(b, g0 + gi + j, ch) + j0);
              for (int i = 0; i < NB; ++i) acc[j][i] += qv * kv[i];
            }
          }
          for (int j = 0; j < GB; ++j)
            for (int i = 0; i < NB; ++i) c[(gi + j) * TM + (t0 + i) * M_ + m] = acc[j][i];
        });
    });
  }

  // c_ (G, T, M): the content logits of the tile; for group layers their exponentials
  // exp(c - max c) instead, with the maxima in cmax_ (the logits themselves are recomputed by the
  // rare rows that need them: this keeps the tile's working set in the L1 cache).
  void content(int64_t b, int64_t j0) {
    const int64_t TM = T_ * M_;
    content_logits(b, j0, 0, G_, c_.data());
    if (factored_)
      for (int64_t g = 0; g < G_; ++g) {
        V* c = c_.data() + g * TM;
        V mx = c[0];
        for (int64_t x = 1; x < TM; ++x) mx = vmax(mx, c[x]);
        cmax_[g] = mx;
        exp_lanes_shifted(c, c, mx, TM);
      }
    if (shared_) shared_positions(b, j0);
  }

  // Shared positional tables (perm_): P_ (G, U T), the positional logits of the U base tables, their
  // maxima PM_ (G, U) over each table's offsets and EP_ = exp(P - PM); inside_ (T) is 1 where the
  // key lies inside the image, else 0. Row (v, g) reads entries perm[v, t] of them.
  void shared_positions(int64_t b, int64_t j0) {
    const T* table = pos_table(b);  // (U T, D2)
    for (int64_t g = 0; g < G_; ++g) {
      V* P = P_.data() + g * R_;
      in_blocks(R_, [&](auto nb, int64_t r0) {
        constexpr int NB = decltype(nb)::value;
        V acc[NB] = {};
        for (int64_t d = 0; d < D2_; ++d) {
          const V qd = load(query_row(b, g, d) + j0);
          for (int i = 0; i < NB; ++i) acc[i] += table[(r0 + i) * D2_ + d] * qd;
        }
        for (int i = 0; i < NB; ++i) P[r0 + i] = acc[i];
      });
      for (int64_t u = 0; u < U_; ++u) {
        const V* Pu = P + u * T_;
        V mx = Pu[0];
        for (int64_t t = 1; t < T_; ++t) mx = vmax(mx, Pu[t]);
        PM_[g * U_ + u] = mx;
        exp_lanes_shifted(EP_.data() + g * R_ + u * T_, Pu, mx, T_);
      }
    }
    for (int64_t t = 0; t < T_; ++t) inside_[t] = load(bias_ + j0 + offsets_[t]) == V{} ? splat(T(1)) : V{};
  }

  // The factors of row (v, g)'s exponentials: ep_ (T) = exp(pl - max pl), eg_ (M) = exp(gl -
  // max gl), with c_ holding exp(c - max c), so that exp(logit - base) = c_[g, t, m] ep_[t] eg_[m];
  // returns base, the sum of the three maxima.
  V factors(int64_t b, int64_t j0, int64_t v, int64_t g) {
    V pmax, gmax{};
    if (shared_) {  // the shared table's exponentials, permuted; keys outside the image get 0
      const int64_t* perm = perm_ + v * T_;
      pmax = PM_[g * U_ + perm[0] / T_];  // the maximum of v's base table
      for (int64_t t = 0; t < T_; ++t) ep_[t] = EP_[g * R_ + perm[t]] * inside_[t];
    } else {
      positional_term(b, j0, v, g);
      pmax = pl_[0];
      for (int64_t t = 1; t < T_; ++t) pmax = vmax(pmax, pl_[t]);
      exp_lanes_shifted(ep_.data(), pl_.data(), pmax, T_);
    }
    if (grp_ != nullptr) {
      group_term(b, j0, v, g);
      gmax = gl_[0];
      for (int64_t m = 1; m < M_; ++m) gmax = vmax(gmax, gl_[m]);
      exp_lanes_shifted(eg_.data(), gl_.data(), gmax, M_);
    }
    return cmax_[g] + pmax + gmax;
  }

  // Group layers: the factors of row (v, g) (see factors), *base and the row's factored sum
  // *total = sum_t ep_[t] sum_m c_[g, t, m] eg_[m]. False where a lane's sum underflows: the
  // row is computed directly instead.
  bool factored_sum(int64_t b, int64_t j0, int64_t v, int64_t g, V* total, V* base) {
    *base = factors(b, j0, v, g);
    const V* ec = c_.data() + g * T_ * M_;
    *total = reduce<V>(T_, [&](int64_t t) {
      const V* et = ec + t * M_;
      V s{};
      for (int64_t m = 0; m < M_; ++m) s += et[m] * eg_[m];
      return ep_[t] * s;
    });
    return !any_lane(!(*total >= splat(static_cast<T>(Limits<T>::tiny))));
  }

  // The factors of row (v, g) scaled by exp(base - lse), so that its probabilities are
  // c_[g, t, m] ep_[t] eg_[m]; false where the forward pass did not factor the row.
  bool scaled_factors(int64_t b, int64_t j0, int64_t v, int64_t g, const V& lse) {
    const V base = factors(b, j0, v, g);
    if (any_lane(lse - base < splat(static_cast<T>(std::log(Limits<T>::tiny))))) return false;
    const V scale = exp_lanes(base - lse);
    for (int64_t t = 0; t < T_; ++t) ep_[t] *= scale;
    return true;
  }

  // Entry (t, m) (x = t M + m) of a factored row g, read from its factors: c_[g, x] ep_[t] eg_[m]
  // (a probability once ep_ is scaled by factored_sum's 1 / total or by scaled_factors).
  auto factored_entries(int64_t g) const {
    const V* ec = c_.data() + g * T_ * M_;
    return [this, ec](int64_t t, int64_t m, int64_t x) { return ec[x] * ep_[t] * eg_[m]; };
  }

  // e_ (T, M): the probabilities of row (v, g) from its logits and log-sum-exp `lse` (per lane).
  void direct_probabilities(int64_t b, int64_t j0, int64_t v, int64_t g, const V& lse) {
    logits(b, j0, v, g);
    exp_lanes_shifted(e_.data(), e_.data(), lse, T_ * M_);
  }

  // Row (v, g) of the backward pass from its probabilities P = prob(t, m, x) (x = t M + m) and
  // dP (dp, after dropout): dsum (T, M) += P (times kept_ with dropout); dc (T, M) += dS = P (dP -
  // delta), delta = sum_x P dP; pl_ (T) and gl_ (M) receive dS summed over m and over t.
  template <typename D, typename P>
  void row_gradient(D dropout, P prob, const V* dp, V* dsum, V* dc) {
    // Both passes run over blocks of up to 8 key elements m, whose sums over t stay in registers.
    V delta{};
    in_blocks(M_, [&](auto mb, int64_t m0) {
      constexpr int MB = decltype(mb)::value;
      V partial[MB] = {};  // P dP summed over t
      for (int64_t t = 0; t < T_; ++t)
        for (int i = 0; i < MB; ++i) {
          const int64_t x = t * M_ + m0 + i;
          const V pr = prob(t, m0 + i, x);
          if constexpr (decltype(dropout)::value) {
            dsum[x] += pr * kept_[x];
          } else {
            dsum[x] += pr;
          }
          partial[i] += pr * dp[x];
        }
      for (int i = 0; i < MB; ++i) delta += partial[i];
    });
    std::fill(pl_.begin(), pl_.end(), V{});
    in_blocks(M_, [&](auto mb, int64_t m0) {
      constexpr int MB = decltype(mb)::value;
      V over_t[MB] = {};  // dS summed over t
      for (int64_t t = 0; t < T_; ++t) {
        V over_m{};
        for (int i = 0; i < MB; ++i) {
          const int64_t x = t * M_ + m0 + i;
          const V ds = prob(t, m0 + i, x) * (dp[x] - delta);
          dc[x] += ds;
          over_m += ds;
          over_t[i] += ds;
        }
        pl_[t] += over_m;
      }
      for (int i = 0; i < MB; ++i) gl_[m0 + i] = over_t[i];
    });
  }

  // e_ (T, M): the logits of row (v, g); returns their maximum over (t, m) per lane.
  V logits(int64_t b, int64_t j0, int64_t v, int64_t g) {
    terms(b, j0, v, g);
    V mx0 = splat(-std::numeric_limits<T>::infinity()), mx1 = mx0;
    const V* c = c_.data() + g * T_ * M_;
    if (factored_) {  // c_ holds exponentials: the logits again, in place in e_
      content_logits(b, j0, g, 1, e_.data());
      c = e_.data();
    }
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t m = 0; m < M_; ++m) {
        const V value = c[t * M_ + m] + pl_[t] + gl_[m];
        e_[t * M_ + m] = value;
        ((t & 1) ? mx1 : mx0) = vmax((t & 1) ? mx1 : mx0, value);
      }
    return vmax(mx0, mx1);
  }

  // pl_ (T) and gl_ (M): the positional term (plus the outside-image bias) and the group term
  // of row (v, g).
  void terms(int64_t b, int64_t j0, int64_t v, int64_t g) {
    positional_term(b, j0, v, g);
    group_term(b, j0, v, g);
  }

  // pl_ (T): the positional term of row (v, g) plus the outside-image bias.
  void positional_term(int64_t b, int64_t j0, int64_t v, int64_t g) {
    if (shared_) {
      const int64_t* perm = perm_ + v * T_;
      for (int64_t t = 0; t < T_; ++t) pl_[t] = load(bias_ + j0 + offsets_[t]) + P_[g * R_ + perm[t]];
      return;
    }
    in_blocks(T_, [&](auto nb, int64_t t0) {
      constexpr int NB = decltype(nb)::value;
      V acc[NB];
      for (int i = 0; i < NB; ++i) acc[i] = load(bias_ + j0 + offsets_[t0 + i]);
      const T* e = pos_table(b) + (v * T_ + t0) * D2_;
      for (int64_t d = 0; d < D2_; ++d) {
        const V qd = load(query_row(b, g, d) + j0);
        for (int i = 0; i < NB; ++i) acc[i] += e[i * D2_ + d] * qd;
      }
      for (int i = 0; i < NB; ++i) pl_[t0 + i] = acc[i];
    });
  }

  // gl_ (M): the group term of row (v, g) (0 for lifting layers).
  void group_term(int64_t b, int64_t j0, int64_t v, int64_t g) {
    for (int64_t m = 0; m < M_; ++m) {
      const T* e = grp_ ? grp_ + ((v * G_ + g) * M_ + m) * Dg_ : nullptr;
      gl_[m] = grp_ ? reduce<V>(Dg_, [&](int64_t d) { return e[d] * load(query_row(b, g, D2_ + d) + j0); }) : V{};
    }
  }

  // dS summed over m (pl_, from row_gradient): the positional term's gradient, into grad_q and
  // pos_acc (with a shared table, into DP_ at the permuted offsets; shared_positional_gradient
  // finishes it).
  void positional_gradient(int64_t b, int64_t j0, int64_t v, int64_t g, V* pos_acc) {
    const V* dpl = pl_.data();
    if (shared_) {
      const int64_t* perm = perm_ + v * T_;
      for (int64_t t = 0; t < T_; ++t) DP_[g * R_ + perm[t]] += dpl[t];
      return;
    }
    const T* e = pos_table(b) + v * T_ * D2_;
    for (int64_t d = 0; d < D2_; ++d) {
      const V qd = load(query_row(b, g, d) + j0);
      gq_[g * C_ + d] += reduce<V>(T_, [&](int64_t t) { return dpl[t] * e[t * D2_ + d]; });
      for (int64_t t = 0; t < T_; ++t) pos_acc[(v * T_ + t) * D2_ + d] += dpl[t] * qd;
    }
  }

  // Shared tables: DP_ (G, U T), the positional gradients of every v gathered at the rows of the
  // base tables, into grad_q and pos_acc (U T, D2).
  void shared_positional_gradient(int64_t b, int64_t j0, V* pos_acc) {
    const T* table = pos_table(b);
    for (int64_t g = 0; g < G_; ++g) {
      const V* dp = DP_.data() + g * R_;
      for (int64_t d = 0; d < D2_; ++d) {
        const V qd = load(query_row(b, g, d) + j0);
        gq_[g * C_ + d] += reduce<V>(R_, [&](int64_t r) { return dp[r] * table[r * D2_ + d]; });
        for (int64_t r = 0; r < R_; ++r) pos_acc[r * D2_ + d] += dp[r] * qd;
      }
    }
  }

  // dS summed over t (gl_, from row_gradient): the group term's gradient, into grad_q and grp_acc.
  void group_gradient(int64_t b, int64_t j0, int64_t v, int64_t g, V* grp_acc) {
    const V* dgl = gl_.data();
    const T* e = grp_ + (v * G_ + g) * M_ * Dg_;
    for (int64_t d = 0; d < Dg_; ++d) {
      const V qd = load(query_row(b, g, D2_ + d) + j0);
      gq_[g * C_ + D2_ + d] += reduce<V>(M_, [&](int64_t m) { return dgl[m] * e[m * Dg_ + d]; });
      for (int64_t m = 0; m < M_; ++m) grp_acc[((v * G_ + g) * M_ + m) * Dg_ + d] += dgl[m] * qd;
    }
  }

  // The dropout keys of row (v, g) for the tile's lanes (rows numbered by the query's pixel).
  RowKeys row_keys(int64_t b, int64_t j0, int64_t v, int64_t g) const {
    const int64_t hw = p_.height * p_.width;
    RowKeys keys;
    for (int l = 0; l < LANES; ++l) {
      const int64_t j = j0 + l, y = j / p_.padded_width, x = j % p_.padded_width;
      const uint64_t key = row_key(p_.seed, static_cast<uint64_t>(((b * hw + y * p_.width + x) * V_ + v) * G_ + g));
      keys.lo[l] = static_cast<uint32_t>(key);
      keys.hi[l] = static_cast<uint32_t>(key >> 32);
    }
    return keys;
  }

  // 1 where entry x of the lanes' rows is kept, else 0 (kept() of every lane, hashed as one vector).
  V mask(const RowKeys& keys, int64_t x) const {
    const Lanes32 h = dropout_hash(keys.lo, keys.hi, Lanes32{} + static_cast<uint32_t>(x)) >> 8;
    V out;
    for (int l = 0; l < LANES; ++l) out[l] = h[l] < p_.threshold ? T(1) : T(0);
    return out;
  }

  const Problem& p_;
  const T *q_, *k_, *v_, *bias_, *pos_;
  const int64_t* perm_;  // (V, T) or null: the shared positional tables (see the section's comment)
  const T* grp_;
  int64_t G_ = 0, M_ = 0, V_ = 0, C_ = 0, D2_ = 0, Dg_ = 0, T_ = 0, L_ = 0, LK_ = 0;
  int64_t U_ = 0, R_ = 0;  // shared tables: U base tables of T rows, R = U T rows
  bool factored_ = false;  // the exponentials factored: group layers, and layers with a shared table
  bool shared_ = false;    // the positional tables of every v permute U base tables
  std::vector<int64_t> offsets_, scatter_order_;
  std::vector<V> P_, EP_, PM_, DP_, inside_;
  std::vector<V> rows_t_, rows_m_;  // factored_rows: the factors of every g of one v
  std::vector<V> c_, cmax_, ep_, eg_, e_, acc_, pl_, gl_, dc_, gq_, dpre_, dpm_, kept_, dsum_;
};

// Tasks of the lanes kernel: (head-batch, part), each part a contiguous run of tiles. A head-batch
// is split only when there are too few of them to keep every thread busy.
struct LaneTasks {
  int64_t tiles, parts;
  LaneTasks(const Problem& p) {
    tiles = p.lanes / LANES;
    const int64_t threads = std::max<int64_t>(1, p.threads);
    parts = p.bn >= 2 * threads ? 1 : std::min<int64_t>(tiles, (2 * threads + p.bn - 1) / p.bn);
  }
  int64_t count(const Problem& p) const { return p.bn * parts; }
  int64_t first(int64_t part) const { return part * tiles / parts; }
  int64_t last(int64_t part) const { return (part + 1) * tiles / parts; }
};

template <typename T>
void lanes_forward_impl(const Problem& p, const T* q, const T* k, const T* v, const T* bias, const T* pos,
                        const int64_t* perm, const T* grp, T* out, T* lse) {
  const LaneTasks tasks(p);
  std::vector<LaneWorker<T>*> workers(std::max<int64_t>(1, p.threads), nullptr);
  parallel_tasks(p.threads, tasks.count(p), true, [&](int64_t thread, int64_t task) {
    if (!workers[thread]) workers[thread] = new LaneWorker<T>(p, q, k, v, bias, pos, perm, grp);
    const int64_t b = task / tasks.parts, part = task % tasks.parts;
    for (int64_t tile = tasks.first(part); tile < tasks.last(part); ++tile)
      workers[thread]->forward(b, tile * LANES, out + b * p.v * p.c * p.lanes, lse + b * p.v * p.g * p.lanes);
  });
  for (auto* w : workers) delete w;
}

// Every task adds into its own accumulators (the tables' gradients, and the key and value
// gradients of a head-batch split into parts), summed afterwards in task order: the result
// does not depend on which thread ran which task.
template <typename T>
void lanes_backward_impl(const Problem& p, const T* q, const T* k, const T* v, const T* bias, const T* pos,
                         const int64_t* perm, const T* grp, const T* grad_out, const T* lse, T* grad_q, T* grad_k, T* grad_v,
                         T* grad_pos, T* grad_grp) {
  const LaneTasks tasks(p);
  const int64_t count = tasks.count(p), T_ = p.patch * p.patch;
  const int64_t pos_size = (perm ? p.pos_bases : p.v) * T_ * p.d2, grp_size = grp ? p.v * p.g * p.m * p.dg : 0;
  const int64_t kv_size = p.m * p.c * p.key_lanes;  // one head-batch of grad_k
  std::vector<std::vector<T>> pos_sum(count), grp_sum(count), k_part(count), v_part(count);
  std::vector<LaneWorker<T>*> workers(std::max<int64_t>(1, p.threads), nullptr);
  parallel_tasks(p.threads, count, true, [&](int64_t thread, int64_t task) {
    if (!workers[thread]) workers[thread] = new LaneWorker<T>(p, q, k, v, bias, pos, perm, grp);
    const int64_t b = task / tasks.parts, part = task % tasks.parts;
    std::vector<Vec<T>> pos_acc(pos_size), grp_acc(grp_size);
    T *gk = grad_k + b * kv_size, *gv = grad_v + b * kv_size;
    if (tasks.parts > 1) {
      k_part[task].assign(kv_size, T(0));
      v_part[task].assign(kv_size, T(0));
      gk = k_part[task].data();
      gv = v_part[task].data();
    }
    const int64_t lanes = p.lanes;
    for (int64_t tile = tasks.first(part); tile < tasks.last(part); ++tile)
      workers[thread]->backward(b, tile * LANES, grad_out + b * p.v * p.c * lanes, lse + b * p.v * p.g * lanes,
                                grad_q + b * p.g * p.c * lanes, gk, gv, pos_acc.data(), grp_acc.data());
    pos_sum[task].resize(pos_size);
    for (int64_t j = 0; j < pos_size; ++j) pos_sum[task][j] = sum_lanes(pos_acc[j]);
    grp_sum[task].resize(grp_size);
    for (int64_t j = 0; j < grp_size; ++j) grp_sum[task][j] = sum_lanes(grp_acc[j]);
  });
  for (int64_t task = 0; task < count; ++task) {
    T* pos_block = grad_pos + (task / tasks.parts % p.pos_heads) * pos_size;  // the table of the task's head
    for (int64_t j = 0; j < pos_size; ++j) pos_block[j] += pos_sum[task][j];
    for (int64_t j = 0; j < grp_size; ++j) grad_grp[j] += grp_sum[task][j];
    if (tasks.parts > 1) {
      const int64_t b = task / tasks.parts;
      for (int64_t j = 0; j < kv_size; ++j) grad_k[b * kv_size + j] += k_part[task][j];
      for (int64_t j = 0; j < kv_size; ++j) grad_v[b * kv_size + j] += v_part[task][j];
    }
  }
  for (auto* w : workers) delete w;
}

// Calls fn.template operator()<M>() for the key-group size p.m (the orders of the groups).
template <typename F>
int dispatch(int64_t m, F fn) {
  switch (m) {
    case 1: fn(std::integral_constant<int, 1>()); return 0;
    case 2: fn(std::integral_constant<int, 2>()); return 0;
    case 4: fn(std::integral_constant<int, 4>()); return 0;
    case 8: fn(std::integral_constant<int, 8>()); return 0;
    case 12: fn(std::integral_constant<int, 12>()); return 0;
    case 16: fn(std::integral_constant<int, 16>()); return 0;
    default: return 1;
  }
}

}  // namespace

#define DEFINE_ENTRY_POINTS(T, SUFFIX)                                                                           \
  extern "C" int fused_forward_##SUFFIX(const Problem* p, const T* q, const T* kc, const T* vc, const T* pos,   \
                                        const T* grp, T* out, T* lse) {                                          \
    return dispatch(p->m, [&](auto m) { forward_impl<T, decltype(m)::value>(*p, q, kc, vc, pos, grp, out, lse); }); \
  }                                                                                                              \
  extern "C" int fused_backward_##SUFFIX(const Problem* p, const T* q, const T* kc, const T* vc, const T* pos,  \
                                         const T* grp, const T* grad_out, const T* lse, T* grad_q, T* grad_kc,   \
                                         T* grad_vc, T* grad_pos, T* grad_grp) {                                 \
    return dispatch(p->m, [&](auto m) {                                                                          \
      backward_impl<T, decltype(m)::value>(*p, q, kc, vc, pos, grp, grad_out, lse, grad_q, grad_kc, grad_vc,     \
                                           grad_pos, grad_grp);                                                  \
    });                                                                                                          \
  }

DEFINE_ENTRY_POINTS(float, f32)
DEFINE_ENTRY_POINTS(double, f64)

#define DEFINE_LANES_ENTRY_POINTS(T, SUFFIX)                                                                     \
  extern "C" int fused_lanes_forward_##SUFFIX(const Problem* p, const T* q, const T* k, const T* v,             \
                                              const T* bias, const T* pos, const int64_t* perm, const T* grp,   \
                                              T* out, T* lse) {                                                  \
    lanes_forward_impl<T>(*p, q, k, v, bias, pos, perm, grp, out, lse);                                         \
    return 0;                                                                                                    \
  }                                                                                                              \
  extern "C" int fused_lanes_backward_##SUFFIX(const Problem* p, const T* q, const T* k, const T* v,            \
                                               const T* bias, const T* pos, const int64_t* perm, const T* grp,  \
                                               const T* grad_out, const T* lse, T* grad_q, T* grad_k, T* grad_v, \
                                               T* grad_pos, T* grad_grp) {                                       \
    lanes_backward_impl<T>(*p, q, k, v, bias, pos, perm, grp, grad_out, lse, grad_q, grad_k, grad_v, grad_pos,  \
                           grad_grp);                                                                            \
    return 0;                                                                                                    \
  }

// Runs the kernel's tasks on the threads of the OpenMP runtime whose GOMP_parallel is `entry`, or
// on threads of its own when `entry` is null.
extern "C" void fused_use_openmp(void* entry) { openmp_parallel = reinterpret_cast<OpenMPParallel>(entry); }

// Lanes per tile of the lanes layout: the caller pads the lanes to a multiple of this.
extern "C" int64_t fused_lanes_tile() { return LANES; }

DEFINE_LANES_ENTRY_POINTS(float, f32)
DEFINE_LANES_ENTRY_POINTS(double, f64)

#ifdef FUSED_PHASES
// The time per phase since the last call (nanoseconds, see PHASE), into out[kPhases]; then zero.
extern "C" void fused_phases(uint64_t* out) {
  for (int i = 0; i < kPhases; ++i) out[i] = phase_ns[i].exchange(0);
}
#endif

// The names of the phases of fused_phases, separated by spaces (also without -DFUSED_PHASES).
#define FUSED_PHASE_NAME(name) #name " "
extern "C" const char* fused_phase_names() { return FUSED_PHASE_LIST(FUSED_PHASE_NAME); }

// The kept flags of `rows` softmax rows of `length` entries (rows numbered from 0), as the
// kernels draw them; for testing the mask's statistics.
extern "C" void fused_dropout_flags(uint64_t seed, int64_t rows, int64_t length, uint32_t threshold, uint8_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t key = row_key(seed, static_cast<uint64_t>(r));
    for (int64_t x = 0; x < length; ++x) out[r * length + x] = kept(key, uint32_t(x), threshold);
  }
}
