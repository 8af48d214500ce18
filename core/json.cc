#include "core/json.h"

#include <cassert>
#include <charconv>
#include <cmath>

namespace blkrep::core {

void JsonWriter::NewlineAndIndent() {
  if (style_ != JsonStyle::kPretty) return;
  out_ += '\n';
  out_.append(2 * frames_.size(), ' ');
}

void JsonWriter::BeforeValue() {
  if (frames_.empty()) {
    assert(!root_written_ && "JsonWriter: second top-level value");
    root_written_ = true;
    return;
  }
  Frame& frame = frames_.back();
  if (frame.is_object) {
    assert(frame.key_pending && "JsonWriter: object member without Key");
    frame.key_pending = false;
    return;
  }
  if (frame.members > 0) out_ += ',';
  ++frame.members;
  NewlineAndIndent();
}

JsonWriter& JsonWriter::Key(std::string_view name) {
  assert(!frames_.empty() && frames_.back().is_object &&
         !frames_.back().key_pending && "JsonWriter: Key outside an object");
  Frame& frame = frames_.back();
  if (frame.members > 0) out_ += ',';
  ++frame.members;
  frame.key_pending = true;
  NewlineAndIndent();
  AppendEscaped(name);
  out_ += style_ == JsonStyle::kPretty ? ": " : ":";
  return *this;
}

JsonWriter& JsonWriter::BeginObject() {
  BeforeValue();
  out_ += '{';
  frames_.push_back(Frame{.is_object = true});
  return *this;
}

JsonWriter& JsonWriter::BeginArray() {
  BeforeValue();
  out_ += '[';
  frames_.push_back(Frame{.is_object = false});
  return *this;
}

void JsonWriter::End([[maybe_unused]] bool is_object, char close) {
  assert(!frames_.empty() && frames_.back().is_object == is_object &&
         !frames_.back().key_pending && "JsonWriter: unbalanced End");
  const bool empty = frames_.back().members == 0;
  frames_.pop_back();
  if (!empty) NewlineAndIndent();
  out_ += close;
}

JsonWriter& JsonWriter::EndObject() {
  End(/*is_object=*/true, '}');
  return *this;
}

JsonWriter& JsonWriter::EndArray() {
  End(/*is_object=*/false, ']');
  return *this;
}

JsonWriter& JsonWriter::String(std::string_view value) {
  BeforeValue();
  AppendEscaped(value);
  return *this;
}

JsonWriter& JsonWriter::Int(std::int64_t value) {
  BeforeValue();
  out_ += std::to_string(value);
  return *this;
}

JsonWriter& JsonWriter::Uint(std::uint64_t value) {
  BeforeValue();
  out_ += std::to_string(value);
  return *this;
}

JsonWriter& JsonWriter::Bool(bool value) {
  BeforeValue();
  out_ += value ? "true" : "false";
  return *this;
}

JsonWriter& JsonWriter::Raw(std::string_view json) {
  BeforeValue();
  out_ += json;
  return *this;
}

JsonWriter& JsonWriter::Null() {
  BeforeValue();
  out_ += "null";
  return *this;
}

JsonWriter& JsonWriter::Double(double value) {
  BeforeValue();
  if (!std::isfinite(value)) {
    out_ += "null";
    return *this;
  }
  char text[32];
  auto [end, ec] = std::to_chars(text, text + sizeof(text), value);
  assert(ec == std::errc());  // 32 bytes hold any shortest double
  (void)ec;
  out_.append(text, end);
  return *this;
}

void JsonWriter::AppendEscaped(std::string_view text) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  out_ += '"';
  for (char c : text) {
    switch (c) {
      case '"':
        out_ += "\\\"";
        break;
      case '\\':
        out_ += "\\\\";
        break;
      case '\b':
        out_ += "\\b";
        break;
      case '\f':
        out_ += "\\f";
        break;
      case '\n':
        out_ += "\\n";
        break;
      case '\r':
        out_ += "\\r";
        break;
      case '\t':
        out_ += "\\t";
        break;
      default: {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x20) {
          out_ += "\\u00";
          out_ += kHexDigits[byte >> 4];
          out_ += kHexDigits[byte & 0xf];
        } else {
          out_ += c;
        }
      }
    }
  }
  out_ += '"';
}

}  // namespace blkrep::core
