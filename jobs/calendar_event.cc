// CalendarEvent parsing, matching and the daylight-saving walk; see
// calendar_event.h for the design and docs/schedules.md for the grammar.
#include "jobs/calendar_event.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <ctime>
#include <utility>
#include <vector>

namespace blkrep::jobs {
namespace {

constexpr std::int64_t kSecondsPerDay = 86400;
constexpr std::int64_t kSecondsPerHour = 3600;
// Farther than any UTC-offset change of a zone moves its wall clock (Samoa
// skipped a whole day in 2011), so no change farther from the walk's
// position or its candidate can bring a match forward.
constexpr std::int64_t kOffsetWindowSeconds = 36 * kSecondsPerHour;
// Offsets are probed this far apart; no zone changes its offset twice within
// an hour.
constexpr std::int64_t kProbeStepSeconds = kSecondsPerHour;
// Bound on the walk's stretches; each ends at an offset change or returns.
constexpr int kMaxWalkSteps = 64;
// A value in a spec longer than this many digits is too large for any field.
constexpr std::size_t kMaxDigits = 6;
constexpr std::size_t kMaxQuotedChars = 80;

constexpr std::string_view kWeekdayNames[7] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
constexpr std::string_view kWeekdayLongNames[7] = {"monday", "tuesday",  "wednesday", "thursday",
                                                   "friday", "saturday", "sunday"};
constexpr std::string_view kWeekdayCanonical[7] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
// days_from_civil) and back.
std::int64_t DaysFromCivil(std::int64_t y, int m, int d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

struct Civil {
  std::int64_t year;
  int month;
  int day;
};

Civil CivilFromDays(std::int64_t z) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const int d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  const int m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  return {yoe + era * 400 + (m <= 2 ? 1 : 0), m, d};
}

int DaysInMonth(std::int64_t year, int month) {
  static constexpr int kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : kDays[month - 1];
}

std::int64_t FloorDiv(std::int64_t a, std::int64_t b) {
  std::int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// Monday = 0 .. Sunday = 6 (1970-01-01 was a Thursday).
int WeekdayOfDays(std::int64_t days) {
  return static_cast<int>(((days % 7) + 7 + 3) % 7);
}

// Smallest set bit >= from, or -1.
int NextBit(std::uint64_t mask, int from) {
  if (from < 0) from = 0;
  if (from >= 64) return -1;
  const std::uint64_t rest = mask >> from;
  return rest == 0 ? -1 : from + std::countr_zero(rest);
}

// The UTC offset of the process's time zone at `instant`, in seconds.
std::optional<std::int64_t> OffsetAt(std::int64_t instant) {
  const std::time_t t = static_cast<std::time_t>(instant);
  std::tm tm{};
  if (localtime_r(&t, &tm) == nullptr) return std::nullopt;
  return tm.tm_gmtoff;
}

// First instant in (from, to] whose offset differs from `offset` (an
// instant whose offset cannot be computed counts as different).
std::optional<std::int64_t> FirstOffsetChange(std::int64_t from, std::int64_t to,
                                              std::int64_t offset) {
  std::int64_t lo = from;
  while (lo < to) {
    std::int64_t hi = std::min(lo + kProbeStepSeconds, to);
    if (OffsetAt(hi) == offset) {
      lo = hi;
      continue;
    }
    while (hi - lo > 1) {  // offset(lo) == offset, offset(hi) != offset
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (OffsetAt(mid) == offset) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    return hi;
  }
  return std::nullopt;
}

// The spec as it goes into a one-line message: printable ASCII kept,
// anything else as \xNN, long specs cut.
std::string Quote(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= kMaxQuotedChars) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != b[i]) return false;
  }
  return true;
}

bool IsAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

std::vector<std::string_view> Split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t at = text.find(separator, start);
    if (at == std::string_view::npos) {
      parts.push_back(text.substr(start));
      return parts;
    }
    parts.push_back(text.substr(start, at - start));
    start = at + 1;
  }
}

// Builds the one-line errors of one Parse call.
class Errors {
 public:
  explicit Errors(std::string_view spec) : quoted_(Quote(spec)) {}
  core::Status operator()(std::string_view problem) const {
    return core::Status::InvalidArgument("schedule '" + quoted_ + "': " + std::string(problem));
  }
  std::string Q(std::string_view text) const { return "'" + Quote(text) + "'"; }

 private:
  std::string quoted_;
};

struct FieldKind {
  const char* name;
  int min;
  int max;
  bool star_step_allowed;
};

constexpr FieldKind kYearField{"year", CalendarEvent::kMinYear, CalendarEvent::kMaxYear, false};
constexpr FieldKind kMonthField{"month", 1, 12, true};
constexpr FieldKind kDayField{"day", 1, 31, true};
constexpr FieldKind kHourField{"hour", 0, 23, true};
constexpr FieldKind kMinuteField{"minute", 0, 59, true};
constexpr FieldKind kSecondField{"second", 0, 59, true};

// A value of `kind`: decimal digits, in range.
core::Result<int> ParseNumber(std::string_view text, const FieldKind& kind, const Errors& err) {
  if (text.empty()) return err(std::string("a value is missing in the ") + kind.name + " field");
  for (char c : text) {
    if (!IsDigit(c)) {
      return err("unexpected " + err.Q(text) + " in the " + kind.name + " field");
    }
  }
  if (text.size() > kMaxDigits) {
    return err(std::string(kind.name) + " " + err.Q(text) + " is too large");
  }
  int value = 0;
  for (char c : text) value = value * 10 + (c - '0');
  if (value < kind.min || value > kind.max) {
    return err(std::string(kind.name) + " " + std::to_string(value) + " is out of range " +
               std::to_string(kind.min) + ".." + std::to_string(kind.max));
  }
  return value;
}

core::Result<int> ParseStep(std::string_view text, const FieldKind& kind, const Errors& err) {
  const std::string what = std::string("step in the ") + kind.name + " field";
  if (text.empty()) return err(what + " is missing");
  for (char c : text) {
    if (!IsDigit(c)) return err("unexpected " + err.Q(text) + " as " + what);
  }
  if (text.size() > kMaxDigits) return err(what + " " + err.Q(text) + " is too large");
  int step = 0;
  for (char c : text) step = step * 10 + (c - '0');
  const int max_step = kind.max - kind.min > 0 ? kind.max - kind.min : 1;
  if (step < 1 || step > max_step) {
    return err(what + " " + std::to_string(step) + " is out of range 1.." + std::to_string(max_step));
  }
  return step;
}

// Parses a field's comma list (`*`, `*/S`, `A`, `A..B`, `A/S`, `A..B/S`)
// into `allowed` (index value - kind.min). Returns whether it was `*`.
core::Result<bool> ParseField(std::string_view text, const FieldKind& kind, const Errors& err,
                              std::vector<bool>& allowed) {
  allowed.assign(static_cast<std::size_t>(kind.max - kind.min + 1), false);
  if (text.empty()) return err(std::string("the ") + kind.name + " field is empty");
  if (text == "*") {
    std::fill(allowed.begin(), allowed.end(), true);
    return true;
  }
  for (std::string_view item : Split(text, ',')) {
    if (item.empty()) return err(std::string("empty value in the ") + kind.name + " field " + err.Q(text));
    std::string_view range = item;
    int step = 1;
    bool has_step = false;
    if (const std::size_t slash = item.find('/'); slash != std::string_view::npos) {
      BLKREP_ASSIGN_OR_RETURN(step, ParseStep(item.substr(slash + 1), kind, err));
      range = item.substr(0, slash);
      has_step = true;
    }
    int first = 0;
    int last = 0;
    if (range == "*") {
      if (has_step && !kind.star_step_allowed) {
        return err(std::string("a repetition in the ") + kind.name + " field needs a start, not '*'");
      }
      if (!has_step) {
        return err(std::string("'*' must stand alone in the ") + kind.name + " field " + err.Q(text));
      }
      first = kind.min;
      last = kind.max;
    } else if (const std::size_t dots = range.find(".."); dots != std::string_view::npos) {
      BLKREP_ASSIGN_OR_RETURN(first, ParseNumber(range.substr(0, dots), kind, err));
      BLKREP_ASSIGN_OR_RETURN(last, ParseNumber(range.substr(dots + 2), kind, err));
      if (first > last) {
        return err(std::string("range ") + err.Q(range) + " in the " + kind.name + " field runs backwards");
      }
    } else {
      BLKREP_ASSIGN_OR_RETURN(first, ParseNumber(range, kind, err));
      last = has_step ? kind.max : first;  // A/S repeats to the field's end
    }
    for (int v = first; v <= last; v += step) allowed[static_cast<std::size_t>(v - kind.min)] = true;
  }
  return false;
}

core::Result<std::uint64_t> ParseMaskField(std::string_view text, const FieldKind& kind,
                                           const Errors& err) {
  std::vector<bool> allowed;
  BLKREP_ASSIGN_OR_RETURN([[maybe_unused]] bool star, ParseField(text, kind, err, allowed));
  std::uint64_t mask = 0;
  for (std::size_t i = 0; i < allowed.size(); ++i) {
    if (allowed[i]) mask |= std::uint64_t{1} << (static_cast<std::size_t>(kind.min) + i);
  }
  return mask;
}

core::Result<int> ParseWeekdayName(std::string_view name, const Errors& err) {
  for (int i = 0; i < 7; ++i) {
    if (EqualsIgnoreCase(name, kWeekdayNames[i]) || EqualsIgnoreCase(name, kWeekdayLongNames[i])) {
      return i;
    }
  }
  if (name.empty()) return err("a weekday is missing");
  return err("unknown weekday " + err.Q(name));
}

// `mon`, `mon..fri`, `sat..mon` (wraps over the week's end), comma lists.
core::Result<std::uint64_t> ParseWeekdays(std::string_view text, const Errors& err) {
  std::uint64_t mask = 0;
  for (std::string_view item : Split(text, ',')) {
    if (item.empty()) return err("empty value in the weekdays " + err.Q(text));
    const std::size_t dots = item.find("..");
    if (dots == std::string_view::npos) {
      BLKREP_ASSIGN_OR_RETURN(int day, ParseWeekdayName(item, err));
      mask |= std::uint64_t{1} << day;
      continue;
    }
    BLKREP_ASSIGN_OR_RETURN(int first, ParseWeekdayName(item.substr(0, dots), err));
    BLKREP_ASSIGN_OR_RETURN(int last, ParseWeekdayName(item.substr(dots + 2), err));
    for (int d = first;; d = (d + 1) % 7) {
      mask |= std::uint64_t{1} << d;
      if (d == last) break;
    }
  }
  return mask;
}

struct Named {
  std::string_view name;
  std::string_view spec;
};

// systemd's names (systemd.time(7)), as Proxmox also defines them.
constexpr Named kNamed[] = {
    {"minutely", "*-*-* *:*:00"},
    {"hourly", "*-*-* *:00:00"},
    {"daily", "*-*-* 00:00:00"},
    {"weekly", "mon *-*-* 00:00:00"},
    {"monthly", "*-*-01 00:00:00"},
    {"yearly", "*-01-01 00:00:00"},
    {"annually", "*-01-01 00:00:00"},
    {"quarterly", "*-01,04,07,10-01 00:00:00"},
    {"semiannually", "*-01,07-01 00:00:00"},
    {"semi-annually", "*-01,07-01 00:00:00"},
};

// A field's canonical text: `*`, `S/K` (a progression of at least five
// values that runs to the field's end; shorter ones read better as a list,
// as systemd writes quarterly's months), else values and `A..B` runs (of at
// least three) separated by commas. Two digits at least, years four.
std::string FormatField(const std::vector<int>& values, int min, int max, int width,
                        bool star_if_full = true) {
  auto num = [width](int v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%0*d", width, v);
    return std::string(buf);
  };
  if (star_if_full && static_cast<int>(values.size()) == max - min + 1) return "*";
  if (values.size() >= 5) {
    const int step = values[1] - values[0];
    bool progression = step >= 2 && values.back() + step > max;
    for (std::size_t i = 2; progression && i < values.size(); ++i) {
      progression = values[i] - values[i - 1] == step;
    }
    if (progression) return num(values[0]) + "/" + std::to_string(step);
  }
  std::string out;
  for (std::size_t i = 0; i < values.size();) {
    std::size_t j = i;
    while (j + 1 < values.size() && values[j + 1] == values[j] + 1) ++j;
    if (!out.empty()) out += ",";
    if (j - i >= 2) {
      out += num(values[i]) + ".." + num(values[j]);
    } else {
      for (std::size_t k = i; k <= j; ++k) out += (k > i ? "," : "") + num(values[k]);
    }
    i = j + 1;
  }
  return out;
}

std::string FormatMask(std::uint64_t mask, int min, int max) {
  std::vector<int> values;
  for (int v = min; v <= max; ++v) {
    if ((mask >> v) & 1U) values.push_back(v);
  }
  return FormatField(values, min, max, 2);
}

}  // namespace

std::string QuoteSchedule(std::string_view spec) { return Quote(spec); }

core::Result<CalendarEvent> CalendarEvent::Parse(std::string_view spec) {
  const Errors err(spec);
  std::vector<std::string_view> tokens;
  for (std::size_t i = 0; i < spec.size();) {
    if (spec[i] == ' ' || spec[i] == '\t') {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < spec.size() && spec[j] != ' ' && spec[j] != '\t') ++j;
    tokens.push_back(spec.substr(i, j - i));
    i = j;
  }
  if (tokens.empty()) return err("the schedule is empty");

  for (const Named& named : kNamed) {
    if (!EqualsIgnoreCase(tokens[0], named.name)) continue;
    if (tokens.size() > 1) {
      return err(err.Q(tokens[0]) + " stands alone, but " + err.Q(tokens[1]) + " follows it");
    }
    return Parse(named.spec);
  }

  CalendarEvent event;
  event.weekdays_ = 0x7f;
  event.months_ = 0x1ffe;            // 1..12
  event.days_ = 0xfffffffeULL;       // 1..31
  event.hours_ = 1;                  // 00:00:00 unless a time is given
  event.minutes_ = 1;
  event.seconds_ = 1;                // second 0 unless the time names seconds
  event.any_year_ = true;
  event.years_.set();

  std::size_t next = 0;
  if (IsAlpha(tokens[next][0])) {
    BLKREP_ASSIGN_OR_RETURN(event.weekdays_, ParseWeekdays(tokens[next], err));
    ++next;
  }
  if (next < tokens.size() && tokens[next].find('-') != std::string_view::npos) {
    const std::string_view date = tokens[next];
    const std::vector<std::string_view> parts = Split(date, '-');
    if (parts.size() > 3) return err("date " + err.Q(date) + " has more than YEARS-MONTHS-DAYS");
    std::size_t p = 0;
    if (parts.size() == 3) {
      std::vector<bool> allowed;
      BLKREP_ASSIGN_OR_RETURN(event.any_year_, ParseField(parts[p++], kYearField, err, allowed));
      for (std::size_t i = 0; i < allowed.size(); ++i) event.years_[i] = allowed[i];
    }
    BLKREP_ASSIGN_OR_RETURN(event.months_, ParseMaskField(parts[p++], kMonthField, err));
    BLKREP_ASSIGN_OR_RETURN(event.days_, ParseMaskField(parts[p++], kDayField, err));
    ++next;
  }
  if (next < tokens.size() && !IsAlpha(tokens[next][0])) {
    const std::string_view time = tokens[next];
    const std::vector<std::string_view> parts = Split(time, ':');
    if (parts.size() > 3) return err("time " + err.Q(time) + " has more than HOURS:MINUTES:SECONDS");
    if (parts.size() == 1) {
      // A lone value is the minute of every hour (`*/5`, `30/10`).
      event.hours_ = (std::uint64_t{1} << 24) - 1;
      BLKREP_ASSIGN_OR_RETURN(event.minutes_, ParseMaskField(parts[0], kMinuteField, err));
    } else {
      BLKREP_ASSIGN_OR_RETURN(event.hours_, ParseMaskField(parts[0], kHourField, err));
      BLKREP_ASSIGN_OR_RETURN(event.minutes_, ParseMaskField(parts[1], kMinuteField, err));
      if (parts.size() == 3) {
        BLKREP_ASSIGN_OR_RETURN(event.seconds_, ParseMaskField(parts[2], kSecondField, err));
      }
    }
    ++next;
  }
  if (next < tokens.size()) {
    if (next > 0 && IsAlpha(tokens[next][0]) && !IsAlpha(tokens[0][0])) {
      return err("weekday " + err.Q(tokens[next]) + " must come first");
    }
    return err("unexpected " + err.Q(tokens[next]) +
               " (the shape is [WEEKDAY] [[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]])");
  }
  return event;
}

std::optional<std::int64_t> CalendarEvent::NextMatchingTimeOfDay(std::int64_t second_of_day) const {
  const int h0 = static_cast<int>(second_of_day / 3600);
  const int m0 = static_cast<int>(second_of_day / 60 % 60);
  const int s0 = static_cast<int>(second_of_day % 60);
  for (int h = NextBit(hours_, h0); h >= 0 && h < 24; h = NextBit(hours_, h + 1)) {
    for (int m = NextBit(minutes_, h == h0 ? m0 : 0); m >= 0 && m < 60; m = NextBit(minutes_, m + 1)) {
      const int s = NextBit(seconds_, h == h0 && m == m0 ? s0 : 0);
      if (s >= 0 && s < 60) return std::int64_t{h} * 3600 + m * 60 + s;
    }
  }
  return std::nullopt;
}

std::optional<std::int64_t> CalendarEvent::NextMatchingWall(std::int64_t wall) const {
  const std::int64_t start_days = FloorDiv(wall, kSecondsPerDay);
  const std::int64_t start_second = wall - start_days * kSecondsPerDay;
  const Civil start = CivilFromDays(start_days);
  for (std::int64_t year = start.year; year <= kMaxYear; ++year) {
    if (!any_year_ && (year < kMinYear || !years_[static_cast<std::size_t>(year - kMinYear)])) continue;
    const bool first_year = year == start.year;
    for (int month = NextBit(months_, first_year ? start.month : 1); month >= 1 && month <= 12;
         month = NextBit(months_, month + 1)) {
      const bool first_month = first_year && month == start.month;
      const int last_day = DaysInMonth(year, month);
      for (int day = NextBit(days_, first_month ? start.day : 1); day >= 1 && day <= last_day;
           day = NextBit(days_, day + 1)) {
        const std::int64_t days = DaysFromCivil(year, month, day);
        if (((weekdays_ >> WeekdayOfDays(days)) & 1U) == 0) continue;
        const auto tod = NextMatchingTimeOfDay(days == start_days ? start_second : 0);
        if (tod) return days * kSecondsPerDay + *tod;
      }
    }
  }
  return std::nullopt;
}

std::optional<std::int64_t> CalendarEvent::Next(std::int64_t after) const {
  // Instants the search covers: 1900-01-01 to the end of kMaxYear (UTC,
  // give or take a day of offset, which the walk tolerates).
  static constexpr std::int64_t kFirstInstant = -2208988800;  // 1900-01-01T00:00:00Z
  static const std::int64_t kEndInstant = DaysFromCivil(kMaxYear + 1, 1, 2) * kSecondsPerDay;
  if (after >= kEndInstant) return std::nullopt;
  tzset();
  std::int64_t t = std::max(after + 1, kFirstInstant);
  // Invariant: no instant in (after, t) matches.
  for (int step = 0; step < kMaxWalkSteps; ++step) {
    const std::optional<std::int64_t> offset = OffsetAt(t);
    if (!offset) return std::nullopt;
    const std::optional<std::int64_t> wall = NextMatchingWall(t + *offset);
    if (!wall) return std::nullopt;
    const std::int64_t candidate = *wall - *offset;  // >= t
    std::optional<std::int64_t> change;
    if (candidate - t <= 2 * kOffsetWindowSeconds) {
      change = FirstOffsetChange(t, candidate, *offset);
    } else {
      // Between the two windows the wall clock stays inside [wall(t),
      // *wall), where nothing matches: only changes near either end matter.
      change = FirstOffsetChange(t, t + kOffsetWindowSeconds, *offset);
      if (!change) {
        const std::int64_t late = candidate - kOffsetWindowSeconds;
        if (OffsetAt(late) != offset) {
          t = late;
          continue;
        }
        change = FirstOffsetChange(late, candidate, *offset);
      }
    }
    if (!change) return candidate;
    // Nothing matches in [t, *change): its wall times lie in [wall(t), *wall).
    const std::optional<std::int64_t> new_offset = OffsetAt(*change);
    if (!new_offset) return std::nullopt;
    if (*new_offset > *offset) {
      // Spring gap: wall times [change + offset, change + new_offset) never
      // happen; one that matches runs at the first instant after the gap.
      const std::optional<std::int64_t> skipped = NextMatchingWall(*change + *offset);
      if (skipped && *skipped < *change + *new_offset) return *change;
    }
    t = *change;
  }
  return std::nullopt;
}

std::string CalendarEvent::Normalized() const {
  std::string out;
  if (weekdays_ != 0x7f) {
    std::vector<int> days;
    for (int d = 0; d < 7; ++d) {
      if ((weekdays_ >> d) & 1U) days.push_back(d);
    }
    for (std::size_t i = 0; i < days.size();) {
      std::size_t j = i;
      while (j + 1 < days.size() && days[j + 1] == days[j] + 1) ++j;
      if (!out.empty()) out += ",";
      if (j - i >= 2) {
        out += std::string(kWeekdayCanonical[days[i]]) + ".." + std::string(kWeekdayCanonical[days[j]]);
      } else {
        for (std::size_t k = i; k <= j; ++k) {
          out += (k > i ? "," : "") + std::string(kWeekdayCanonical[days[k]]);
        }
      }
      i = j + 1;
    }
    out += " ";
  }
  if (any_year_) {
    out += "*";
  } else {
    std::vector<int> years;
    for (int y = kMinYear; y <= kMaxYear; ++y) {
      if (years_[static_cast<std::size_t>(y - kMinYear)]) years.push_back(y);
    }
    // A set that happens to hold every year is written out, not as `*`
    // (which also covers years outside kMinYear..kMaxYear).
    out += FormatField(years, kMinYear, kMaxYear, 4, /*star_if_full=*/false);
  }
  out += "-" + FormatMask(months_, 1, 12) + "-" + FormatMask(days_, 1, 31) + " ";
  out += FormatMask(hours_, 0, 23) + ":" + FormatMask(minutes_, 0, 59) + ":" + FormatMask(seconds_, 0, 59);
  return out;
}

}  // namespace blkrep::jobs
