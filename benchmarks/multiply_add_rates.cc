// How many multiply-adds a second one core issues with each AVX2 form a dense layer can run on:
//   fma_float32            float32 FMA, 8 a vector;
//   vpmaddwd_int16         int16 VPMADDWD, 16 a vector, summed in int32;
//   vpmaddubsw_int8        uint8 x int8 VPMADDUBSW, 32 a vector, each widened by a VPMADDWD to int32;
//   vpmaddubsw_pair_int8   two VPMADDUBSW summed in int16, then one VPMADDWD: exact only if each
//                          operand takes 7 bits (2 x 2 x 127 x 64 fits int16);
//   vpmaddubsw_bare_int8   VPMADDUBSW alone, summed in int16: the instruction's own rate, which no
//                          dense layer reaches (its int16 sums overflow after a few steps).
// Written in assembly so the compiler cannot merge or drop the repeated instructions; twelve
// independent accumulators cover each instruction's latency. Prints one line per form:
// `form=fma_float32 multiply_adds_per_ns=52.9`.
#include <chrono>
#include <cstdio>

namespace {

constexpr long kIterations = 50000000;

#define CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define CLOBBERS "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", \
                 "ymm10", "ymm11", "ymm12", "ymm13", "ymm14", "ymm15"
#define ZERO_ALL                                                                                   \
  asm volatile("vpxor %%ymm0, %%ymm0, %%ymm0\n vpxor %%ymm1, %%ymm1, %%ymm1\n"                    \
               "vpxor %%ymm2, %%ymm2, %%ymm2\n vpxor %%ymm3, %%ymm3, %%ymm3\n"                     \
               "vpxor %%ymm4, %%ymm4, %%ymm4\n vpxor %%ymm5, %%ymm5, %%ymm5\n"                     \
               "vpxor %%ymm6, %%ymm6, %%ymm6\n vpxor %%ymm7, %%ymm7, %%ymm7\n"                     \
               "vpxor %%ymm8, %%ymm8, %%ymm8\n vpxor %%ymm9, %%ymm9, %%ymm9\n"                     \
               "vpxor %%ymm10, %%ymm10, %%ymm10\n vpxor %%ymm11, %%ymm11, %%ymm11\n"              \
               "vpxor %%ymm13, %%ymm13, %%ymm13\n vpxor %%ymm14, %%ymm14, %%ymm14\n"              \
               "vpxor %%ymm15, %%ymm15, %%ymm15\n" ::: CLOBBERS)

#define FMA(i) "vfmadd231ps %%ymm14, %%ymm15, %%ymm" #i "\n"
#define MADDWD(i) "vpmaddwd %%ymm14, %%ymm15, %%ymm12\n vpaddd %%ymm12, %%ymm" #i ", %%ymm" #i "\n"
#define MADDUBSW(i) "vpmaddubsw %%ymm14, %%ymm15, %%ymm12\n vpmaddwd %%ymm12, %%ymm13, %%ymm12\n" \
                    "vpaddd %%ymm12, %%ymm" #i ", %%ymm" #i "\n"
#define MADDUBSW_PAIR(i) "vpmaddubsw %%ymm14, %%ymm15, %%ymm12\n vpmaddubsw %%ymm15, %%ymm14, %%ymm13\n" \
                         "vpaddw %%ymm13, %%ymm12, %%ymm12\n vpmaddwd %%ymm12, %%ymm14, %%ymm12\n"      \
                         "vpaddd %%ymm12, %%ymm" #i ", %%ymm" #i "\n"
#define MADDUBSW_BARE(i) "vpmaddubsw %%ymm14, %%ymm15, %%ymm12\n vpaddw %%ymm12, %%ymm" #i ", %%ymm" #i "\n"

template <typename Body>
double rate(Body body, int multiply_adds_per_instruction) {
  body(kIterations / 10);  // warm up: wakes the vector unit at full clock
  const auto start = std::chrono::steady_clock::now();
  body(kIterations);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 12.0 * kIterations * multiply_adds_per_instruction / seconds / 1e9;
}

}  // namespace

// A loop of twelve independent chains of one form's instructions, n times.
#define LOOP(FORM)                                                                 \
  [](long n) {                                                                     \
    ZERO_ALL;                                                                      \
    for (long i = 0; i < n; ++i) asm volatile(CHAINS(FORM) ::: CLOBBERS);        \
  }

int main() {
  // Each form is timed after the one before, so none competes with another for the core.
  std::printf("form=fma_float32 multiply_adds_per_ns=%.1f\n", rate(LOOP(FMA), 8));
  std::printf("form=vpmaddwd_int16 multiply_adds_per_ns=%.1f\n", rate(LOOP(MADDWD), 16));
  std::printf("form=vpmaddubsw_int8 multiply_adds_per_ns=%.1f\n", rate(LOOP(MADDUBSW), 32));
  std::printf("form=vpmaddubsw_pair_int8 multiply_adds_per_ns=%.1f\n", rate(LOOP(MADDUBSW_PAIR), 64));
  std::printf("form=vpmaddubsw_bare_int8 multiply_adds_per_ns=%.1f\n", rate(LOOP(MADDUBSW_BARE), 32));
  return 0;
}
