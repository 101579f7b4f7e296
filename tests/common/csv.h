// Reading the real reports of ../shared/data (tests and benchmarks): one small
// RFC 4180 CSV reader (quoted fields may hold commas, newlines and doubled
// quotes; rows end in LF or CRLF). Header-only, without GoogleTest, so that
// bench/ may include it too.
#pragma once

#include <cstddef>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace chatradio::testing {

// Every row of the file, the header row first; an unreadable file has none.
inline std::vector<std::vector<std::string>> read_csv_rows(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  std::vector<std::vector<std::string>> rows(1);
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      rows.back().push_back(std::move(field));
      field.clear();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      rows.back().push_back(std::move(field));
      field.clear();
      rows.emplace_back();
    } else {
      field += c;
    }
  }
  if (!field.empty() || !rows.back().empty()) rows.back().push_back(std::move(field));
  if (rows.back().empty()) rows.pop_back();
  return rows;
}

// The rows after the header as column-name -> value maps.
inline std::vector<std::map<std::string, std::string>> read_csv(const std::string& path) {
  const std::vector<std::vector<std::string>> rows = read_csv_rows(path);
  std::vector<std::map<std::string, std::string>> out;
  for (size_t r = 1; r < rows.size(); ++r) {
    std::map<std::string, std::string> row;
    for (size_t c = 0; c < rows[0].size() && c < rows[r].size(); ++c) row[rows[0][c]] = rows[r][c];
    out.push_back(std::move(row));
  }
  return out;
}

// Non-empty values of column `name`, in row order.
inline std::vector<std::string> csv_column(const std::string& path, const std::string& name) {
  const std::vector<std::vector<std::string>> rows = read_csv_rows(path);
  std::vector<std::string> out;
  if (rows.empty()) return out;
  size_t col = rows[0].size();
  for (size_t i = 0; i < rows[0].size(); ++i) {
    if (rows[0][i] == name) col = i;
  }
  for (size_t r = 1; r < rows.size(); ++r) {
    if (col < rows[r].size() && !rows[r][col].empty()) out.push_back(rows[r][col]);
  }
  return out;
}

}  // namespace chatradio::testing
