// main() of test_gpu when GoogleTest is absent (stand-alone device build).
#include "tests/gpu/mini_gtest.h"

CHATRADIO_MINI_GTEST_MAIN
