// CalendarEvent: a job's schedule, pvesr's subset of systemd calendar events
// (docs/schedules.md has the grammar, the names and worked examples).
//
// Design note. A spec is `[WEEKDAYS] [[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]]`
// or one of the names minutely, hourly, daily, weekly, monthly, yearly
// (annually), quarterly, semiannually (semi-annually). Parse turns it into one
// set of allowed values per field (bit masks; years 1970..2199, systemd's
// limit), so two specs that mean the same thing are the same object and
// Normalized() prints the same canonical text for both. An instant matches
// when its local wall-clock time (the process's time zone, TZ) has every
// field in its set; weekday and day of month must both match (`sat *-1..7` is
// the first Saturday of a month).
//
// Daylight-saving rule (never skip a replication, never invent one):
//  - a wall-clock time that occurs twice (autumn fall-back) matches at both
//    instants, so `hourly` runs at 02:00 summer time and again at 02:00
//    standard time;
//  - a wall-clock time that does not exist (spring gap) matches at the first
//    instant after the gap, so a job at 02:30 runs at 03:00 that day; several
//    times inside one gap run once.
//
// How Next works. It walks forward in instants, through stretches where the
// UTC offset (localtime_r's tm_gmtoff) is constant. In a stretch the wall
// clock is instant + offset, so the first matching wall time at or after the
// stretch's start is found by calendar arithmetic alone (no time-zone calls),
// and its instant is wall - offset unless the offset changes first. Offset
// changes are found by probing localtime_r every hour and bisecting to the
// second, only within 36 hours of the walk's position and of the candidate
// (an offset change of the zone moves wall time by less than that, so none
// farther away can bring a match forward); a change is a gap or a fold and
// is handled by the rule above. The search ends at 2199-12-31: Next costs a
// few hundred localtime_r calls at most, microseconds, for any spec.
//
// Thread safety: a CalendarEvent is immutable after Parse; Next may be called
// from several threads, but not while another thread changes TZ (Next calls
// tzset so that a change of TZ made earlier takes effect).
#pragma once

#include <bitset>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace blkrep::jobs {

// A spec as Parse's messages quote it (printable ASCII kept, other bytes as
// \xNN, long specs shortened), for messages of callers about a valid spec.
std::string QuoteSchedule(std::string_view spec);

class CalendarEvent {
 public:
  // Years a spec may name; the search for Next stops at the end of kMaxYear.
  static constexpr int kMinYear = 1970;
  static constexpr int kMaxYear = 2199;

  // kInvalidArgument with a one-line message naming what is wrong and where,
  // e.g. "schedule 'mon..xyz 8:00': unknown weekday 'xyz'". Any bytes are
  // safe input; the spec is quoted in the message with non-printable bytes
  // escaped and long specs shortened.
  static core::Result<CalendarEvent> Parse(std::string_view spec);

  // First instant strictly after `after` (epoch seconds) whose local time
  // matches, with the daylight-saving rule above; std::nullopt if there is
  // none up to the end of kMaxYear (e.g. a date in the past).
  std::optional<std::int64_t> Next(std::int64_t after) const;

  // Canonical text in systemd's normalized shape, e.g. "Mon..Fri *-*-*
  // 08..17,22:00,15,30,45:00" for "mon..fri 8..17,22:0/15", "*-*-* *:00/5:00"
  // for "*/5" and "*-*-* 00:00:00" for "daily". Specs with the same meaning give the same text, and
  // Parse(Normalized()) gives an equal event.
  std::string Normalized() const;

  friend bool operator==(const CalendarEvent&, const CalendarEvent&) = default;

 private:
  CalendarEvent() = default;

  // Smallest matching wall-clock time >= `wall` (seconds of a proleptic
  // Gregorian calendar counted like epoch seconds, with no time zone), or
  // std::nullopt past kMaxYear.
  std::optional<std::int64_t> NextMatchingWall(std::int64_t wall) const;
  // Smallest matching second of the day >= `second_of_day`, if any.
  std::optional<std::int64_t> NextMatchingTimeOfDay(std::int64_t second_of_day) const;

  // Bit i set: value i allowed. Weekdays: bit 0 is Monday, bit 6 Sunday.
  std::uint64_t weekdays_ = 0;
  std::uint64_t months_ = 0;   // bits 1..12
  std::uint64_t days_ = 0;     // bits 1..31
  std::uint64_t hours_ = 0;    // bits 0..23
  std::uint64_t minutes_ = 0;  // bits 0..59
  std::uint64_t seconds_ = 0;  // bits 0..59
  bool any_year_ = true;
  std::bitset<kMaxYear - kMinYear + 1> years_;  // bit i: year kMinYear + i
};

}  // namespace blkrep::jobs
