// JsonWriter: a small streaming JSON writer for machine-readable output
// (`blkrep status --json` and the like).
//
// Values are appended in document order; the writer inserts commas, the
// ":" after keys and, in kPretty style, newlines with 2-space indentation.
// Strings are escaped per RFC 8259: '"', '\\' and control characters
// (U+0000..U+001F, as \b \f \n \r \t or \u00XX); every other byte, UTF-8
// included, is copied as is. Non-finite doubles are written as null.
//
// Misuse (a value in an object without a Key, unbalanced End*, a second
// top-level value) is a bug of the caller and asserts.
//
// Thread safety: none; one writer per thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace blkrep::core {

enum class JsonStyle : std::uint8_t { kCompact, kPretty };

class JsonWriter {
 public:
  explicit JsonWriter(JsonStyle style = JsonStyle::kCompact) : style_(style) {}

  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  // The name of the next member. REQUIRES: inside an object, no key pending.
  JsonWriter& Key(std::string_view name);

  JsonWriter& String(std::string_view value);
  JsonWriter& Int(std::int64_t value);
  JsonWriter& Uint(std::uint64_t value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();
  // null for an empty text (an error, a reason: "none"), else the string.
  JsonWriter& StringOrNull(std::string_view value) { return value.empty() ? Null() : String(value); }
  // Shortest text that reads back as the same double; NaN/Inf as null.
  JsonWriter& Double(double value);
  // A value that is already JSON, inserted as is. REQUIRES: one complete
  // JSON value this program produced (never text from outside).
  JsonWriter& Raw(std::string_view json);

  // The text written so far; a complete document once complete().
  const std::string& str() const { return out_; }
  // True when one top-level value was written and every container closed.
  bool complete() const { return root_written_ && frames_.empty(); }

 private:
  struct Frame {
    bool is_object = false;
    std::uint64_t members = 0;  // values (arrays) or keys (objects) so far
    bool key_pending = false;   // objects: Key written, value not yet
  };

  // Comma, newline and indentation before a value; checks the value is
  // allowed here.
  void BeforeValue();
  void NewlineAndIndent();
  void End(bool is_object, char close);
  void AppendEscaped(std::string_view text);

  const JsonStyle style_;
  std::string out_;
  std::vector<Frame> frames_;
  bool root_written_ = false;
};

}  // namespace blkrep::core
