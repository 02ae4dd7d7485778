#include "format/json_strict.h"

#include <unordered_set>
#include <vector>

namespace dws {

using json = nlohmann::json;

Result<json> parse_json_strict(std::string_view text, const std::string& what) {
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return make_error(ErrorCode::kHeaderJson, what + ": NUL byte at offset " + std::to_string(nul));
  }
  std::vector<std::unordered_set<std::string>> keys;  // one set per open object
  std::string duplicate;
  bool has_duplicate = false;
  json::parser_callback_t cb = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty() && parsed.is_string() &&
               !keys.back().insert(parsed.get_ref<const std::string&>()).second && !has_duplicate) {
      has_duplicate = true;
      duplicate = parsed.get_ref<const std::string&>();
    }
    return true;
  };
  json doc = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return make_error(ErrorCode::kHeaderJson, what + ": not valid JSON");
  if (has_duplicate) {
    return make_error(ErrorCode::kDuplicate,
                      what + ": duplicate key " + json(duplicate).dump(-1, ' ', true, json::error_handler_t::replace));
  }
  return doc;
}

}  // namespace dws
