#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "dws/diff.h"
#include "dws/simulate.h"
#include "test_util.h"

namespace dws {
namespace {

TEST(Rounding, KnownValuesOfEveryCopyDtype) {
  // bf16: ties to even, overflow to inf, NaN stays NaN.
  EXPECT_EQ(round_float_to(DType::kBF16, 1.0f), 0x3F80u);
  EXPECT_EQ(round_float_to(DType::kBF16, 1.0f + 0x1p-8f), 0x3F80u);         // tie -> even
  EXPECT_EQ(round_float_to(DType::kBF16, 1.0f + 3 * 0x1p-8f), 0x3F82u);     // tie -> even (up)
  EXPECT_EQ(round_float_to(DType::kBF16, -2.0f), 0xC000u);
  EXPECT_EQ(round_float_to(DType::kBF16, std::numeric_limits<float>::max()), 0x7F80u);
  EXPECT_EQ(round_float_to(DType::kBF16, -0.0f), 0x8000u);
  EXPECT_EQ(round_float_to(DType::kBF16, NAN) & 0x7F80u, 0x7F80u);
  EXPECT_NE(round_float_to(DType::kBF16, NAN) & 0x7Fu, 0u);
  // f16: normal, tie, max, overflow, smallest subnormal, a subnormal tie.
  EXPECT_EQ(round_float_to(DType::kF16, 1.0f), 0x3C00u);
  EXPECT_EQ(round_float_to(DType::kF16, 0.1f), 0x2E66u);
  EXPECT_EQ(round_float_to(DType::kF16, 1.0f + 0x1p-11f), 0x3C00u);
  EXPECT_EQ(round_float_to(DType::kF16, 65504.0f), 0x7BFFu);
  EXPECT_EQ(round_float_to(DType::kF16, 65520.0f), 0x7C00u);
  EXPECT_EQ(round_float_to(DType::kF16, 0x1p-24f), 0x0001u);
  EXPECT_EQ(round_float_to(DType::kF16, 0x1p-25f), 0x0000u);  // tie between 0 and the smallest: even (0)
  EXPECT_EQ(round_float_to(DType::kF16, -0x1p-14f), 0x8400u);
  // f8 e4m3 (fn): saturates at 448; e5m2 has infinities.
  EXPECT_EQ(round_float_to(DType::kF8_E4M3, 1.0f), 0x38u);
  EXPECT_EQ(round_float_to(DType::kF8_E4M3, 448.0f), 0x7Eu);
  EXPECT_EQ(round_float_to(DType::kF8_E4M3, 1000.0f), 0x7Eu);
  EXPECT_EQ(round_float_to(DType::kF8_E4M3, -0x1p-9f), 0x81u);  // smallest subnormal
  EXPECT_EQ(round_float_to(DType::kF8_E5M2, 1.0f), 0x3Cu);
  EXPECT_EQ(round_float_to(DType::kF8_E5M2, 57344.0f), 0x7Bu);
  EXPECT_EQ(round_float_to(DType::kF8_E5M2, 1e6f), 0x7Cu);
}

TEST(Rounding, Bf16IsTheNearestRepresentableValue) {
  // Ties are checked above; here: no neighbouring bf16 value is closer to x than the rounded one.
  std::mt19937 rng(81);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = u(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 40) - 20);
    const uint32_t r = static_cast<uint32_t>(round_float_to(DType::kBF16, x)) << 16;
    const float y = std::bit_cast<float>(r);
    const float up = std::bit_cast<float>(r + 0x10000u), down = std::bit_cast<float>(r - 0x10000u);
    ASSERT_LE(std::fabs(y - x), std::fabs(up - x)) << x;
    ASSERT_LE(std::fabs(y - x), std::fabs(down - x)) << x;
  }
}

TEST(ParseCount, Suffixes) {
  EXPECT_EQ(parse_count("600M"), 600'000'000u);
  EXPECT_EQ(parse_count("7B"), 7'000'000'000u);
  EXPECT_EQ(parse_count("1.5e6"), 1'500'000u);
  EXPECT_EQ(parse_count("12"), 12u);
  EXPECT_FALSE(parse_count("x"));
  EXPECT_FALSE(parse_count("-5M"));
  EXPECT_FALSE(parse_count("5Q"));
}

double density_of(const std::string& a, const std::string& b) {
  auto x = Checkpoint::open(a);
  auto y = Checkpoint::open(b);
  uint64_t changes = 0, elements = 0;
  for (const auto& d : diff_checkpoints(*x, *y, 2)) {
    changes += d.positions.size();
    elements += d.base->numel();
  }
  return static_cast<double>(changes) / static_cast<double>(elements);
}

TEST(Simulate, IsDeterministicAndLandsNearTheRealDensity) {
  test::TempDir dir;
  SimulateOptions o;
  o.shape = "tiny";
  o.layers = 1;
  o.steps = 2;
  o.seed = 5;
  std::filesystem::create_directories(dir / "a");
  std::filesystem::create_directories(dir / "b");
  std::filesystem::create_directories(dir / "c");
  auto s = simulate_trajectory(dir / "a", o);
  ASSERT_TRUE(s.ok()) << s.status().to_string();
  EXPECT_EQ(s->layers, 1u);
  ASSERT_TRUE(simulate_trajectory(dir / "b", o).ok());
  EXPECT_EQ(test::read_bytes(dir / "a/step002.safetensors"), test::read_bytes(dir / "b/step002.safetensors"));
  o.seed = 6;
  ASSERT_TRUE(simulate_trajectory(dir / "c", o).ok());
  EXPECT_NE(test::read_bytes(dir / "a/step002.safetensors"), test::read_bytes(dir / "c/step002.safetensors"));
  // trajectory-small: 0.39-0.43% at lr 1e-6. The simulator is calibrated to it; allow a wide band.
  const double d = density_of(dir / "a/step000.safetensors", dir / "a/step001.safetensors");
  EXPECT_GT(d, 0.002);
  EXPECT_LT(d, 0.008);
  auto f = SafetensorsFile::open(dir / "a/step001.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->header().metadata.at("step"), "001");
}

TEST(Simulate, DensityGrowsWithTheLearningRateAndWorksForEveryCopyDtype) {
  test::TempDir dir;
  double last = 0;
  for (double lr : {1e-7, 1e-6, 1e-5}) {
    SimulateOptions o;
    o.shape = "tiny";
    o.layers = 1;
    o.steps = 1;
    o.lr = lr;
    const std::string d = dir / ("lr" + std::to_string(lr));
    std::filesystem::create_directories(d);
    ASSERT_TRUE(simulate_trajectory(d, o).ok());
    const double density = density_of(d + "/step000.safetensors", d + "/step001.safetensors");
    EXPECT_GT(density, last * 3) << "lr " << lr;
    last = density;
  }
  for (DType dt : {DType::kF16, DType::kF32, DType::kF8_E4M3, DType::kF8_E5M2}) {
    SimulateOptions o;
    o.shape = "tiny";
    o.layers = 1;
    o.steps = 1;
    o.dtype = dt;
    const std::string d = dir / std::string(dtype_name(dt));
    std::filesystem::create_directories(d);
    ASSERT_TRUE(simulate_trajectory(d, o).ok());
    auto f = SafetensorsFile::open(d + "/step001.safetensors");
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(f->header().tensors[0].dtype, dt);
  }
}

TEST(Simulate, RefusesBadOptions) {
  test::TempDir dir;
  SimulateOptions o;
  o.dtype = DType::kI32;
  EXPECT_EQ(simulate_trajectory(dir.path(), o).status().code(), ErrorCode::kInvalidArgument);
  o.dtype = DType::kBF16;
  o.shape = "gpt5";
  EXPECT_EQ(simulate_trajectory(dir.path(), o).status().code(), ErrorCode::kInvalidArgument);
  o.shape = "tiny";
  o.lr = -1;
  EXPECT_EQ(simulate_trajectory(dir.path(), o).status().code(), ErrorCode::kInvalidArgument);
  o.lr = 1e-6;
  o.steps = 0;
  EXPECT_EQ(simulate_trajectory(dir.path(), o).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  auto bad_params = test::run_cli({"simulate", "-o", dir / "p", "--params", "lots"});
  EXPECT_EQ(bad_params.exit_code, 2) << bad_params.output;
  EXPECT_NE(bad_params.output.find("--params 'lots'"), std::string::npos) << bad_params.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "p/step000.safetensors"));
  auto cli = test::run_cli({"simulate", "-o", dir / "x", "--dtype", "I8"});
  EXPECT_EQ(cli.exit_code, 2) << cli.output;
  EXPECT_NE(cli.output.find("I8"), std::string::npos);
}

}  // namespace
}  // namespace dws
