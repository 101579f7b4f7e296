// Reading the real reports of ../shared/data for benchmarks: a small RFC 4180
// CSV reader (quoted fields, doubled quotes, newlines inside quotes).
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace chatradio::bench {

inline std::vector<std::vector<std::string>> read_csv(const std::string& path) {
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

// Non-empty values of column `name` (header row first).
inline std::vector<std::string> csv_column(const std::string& path, const std::string& name) {
  const auto rows = read_csv(path);
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

}  // namespace chatradio::bench
