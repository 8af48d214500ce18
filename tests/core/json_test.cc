#include "core/json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace blkrep::core {
namespace {

TEST(JsonWriterTest, ScalarsAtTopLevel) {
  EXPECT_EQ(JsonWriter().Int(-42).str(), "-42");
  EXPECT_EQ(JsonWriter().Uint(UINT64_MAX).str(), "18446744073709551615");
  EXPECT_EQ(JsonWriter().Int(INT64_MIN).str(), "-9223372036854775808");
  EXPECT_EQ(JsonWriter().Bool(true).str(), "true");
  EXPECT_EQ(JsonWriter().Bool(false).str(), "false");
  EXPECT_EQ(JsonWriter().Null().str(), "null");
  EXPECT_EQ(JsonWriter().StringOrNull("").str(), "null");
  EXPECT_EQ(JsonWriter().StringOrNull("why").str(), "\"why\"");
  EXPECT_EQ(JsonWriter().String("hi").str(), "\"hi\"");
}

TEST(JsonWriterTest, CommasSeparateMembersAndElements) {
  JsonWriter writer;
  writer.BeginObject()
      .Key("name")
      .String("vm-100-disk-0")
      .Key("size")
      .Uint(1024)
      .Key("blocks")
      .BeginArray()
      .Int(1)
      .Int(2)
      .Int(3)
      .EndArray()
      .Key("nested")
      .BeginObject()
      .Key("ok")
      .Bool(true)
      .EndObject()
      .Key("none")
      .Null()
      .EndObject();
  EXPECT_EQ(writer.str(),
            R"({"name":"vm-100-disk-0","size":1024,"blocks":[1,2,3],)"
            R"("nested":{"ok":true},"none":null})");
  EXPECT_TRUE(writer.complete());
}

TEST(JsonWriterTest, EmptyContainers) {
  EXPECT_EQ(JsonWriter().BeginObject().EndObject().str(), "{}");
  EXPECT_EQ(JsonWriter().BeginArray().EndArray().str(), "[]");
  EXPECT_EQ(JsonWriter()
                .BeginArray()
                .BeginArray()
                .EndArray()
                .BeginObject()
                .EndObject()
                .EndArray()
                .str(),
            "[[],{}]");
}

TEST(JsonWriterTest, CompleteOnlyWhenEveryContainerIsClosed) {
  JsonWriter writer;
  EXPECT_FALSE(writer.complete());
  writer.BeginArray();
  EXPECT_FALSE(writer.complete());
  writer.EndArray();
  EXPECT_TRUE(writer.complete());
}

TEST(JsonWriterTest, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(JsonWriter().String("a\"b\\c").str(), R"("a\"b\\c")");
  EXPECT_EQ(JsonWriter().String("\b\f\n\r\t").str(), R"("\b\f\n\r\t")");
  EXPECT_EQ(JsonWriter().String(std::string("\x00\x01\x1f", 3)).str(),
            R"("\u0000\u0001\u001f")");
  EXPECT_EQ(JsonWriter().String("/\x7f").str(), "\"/\x7f\"");
}

TEST(JsonWriterTest, KeysAreEscapedToo) {
  JsonWriter writer;
  writer.BeginObject().Key("a\"\n").Int(1).EndObject();
  EXPECT_EQ(writer.str(), R"({"a\"\n":1})");
}

TEST(JsonWriterTest, NonAsciiUtf8PassesThrough) {
  EXPECT_EQ(JsonWriter().String("Grüße, 日本, 🙂").str(),
            "\"Grüße, 日本, 🙂\"");
}

TEST(JsonWriterTest, DoublesRoundTripAndNonFiniteIsNull) {
  EXPECT_EQ(JsonWriter().Double(1.5).str(), "1.5");
  EXPECT_EQ(JsonWriter().Double(0.1).str(), "0.1");
  EXPECT_EQ(JsonWriter().Double(-2).str(), "-2");
  EXPECT_EQ(std::stod(JsonWriter().Double(1e300).str()), 1e300);
  EXPECT_EQ(JsonWriter().Double(std::nan("")).str(), "null");
  EXPECT_EQ(JsonWriter().Double(std::numeric_limits<double>::infinity()).str(),
            "null");
}

TEST(JsonWriterTest, PrettyStyleIndentsByTwoSpaces) {
  JsonWriter writer(JsonStyle::kPretty);
  writer.BeginObject()
      .Key("job")
      .String("100-0")
      .Key("volumes")
      .BeginArray()
      .String("a")
      .String("b")
      .EndArray()
      .Key("empty")
      .BeginArray()
      .EndArray()
      .Key("state")
      .BeginObject()
      .Key("fail_count")
      .Int(0)
      .EndObject()
      .EndObject();
  EXPECT_EQ(writer.str(),
            "{\n"
            "  \"job\": \"100-0\",\n"
            "  \"volumes\": [\n"
            "    \"a\",\n"
            "    \"b\"\n"
            "  ],\n"
            "  \"empty\": [],\n"
            "  \"state\": {\n"
            "    \"fail_count\": 0\n"
            "  }\n"
            "}");
}

#ifndef NDEBUG
TEST(JsonWriterDeathTest, ValueWithoutKeyInObjectAsserts) {
  EXPECT_DEATH(JsonWriter().BeginObject().Int(1), "without Key");
}
#endif

}  // namespace
}  // namespace blkrep::core
