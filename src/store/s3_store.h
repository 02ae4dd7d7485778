// The S3 store driver (internal): open_store() hands "s3://bucket/prefix" URIs here.
#pragma once

#include <memory>

#include "dws/store.h"
#include "store/s3_config.h"

namespace dws {

Result<std::unique_ptr<Store>> open_s3_store(const S3Config& config, const StoreOptions& options);

}  // namespace dws
