// json_strict.h — JSON parsing for untrusted documents (internal).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "dws/status.h"

namespace dws {

// Parses `text` as one JSON value. Unlike plain nlohmann parsing it refuses a key repeated in any object
// (E_DUPLICATE; nlohmann would keep the last one silently) and a raw NUL byte (nlohmann's lexer takes it
// for the end of input). Other failures are E_HEADER_JSON. `what` names the document in messages.
Result<nlohmann::json> parse_json_strict(std::string_view text, const std::string& what);

}  // namespace dws
