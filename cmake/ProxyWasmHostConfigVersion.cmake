# Version check for find_package(ProxyWasmHost <version>). The version is the
# crate's, read from Cargo.toml. Compatible: not older than asked, same major
# version, and for 0.x the same minor version too (as Cargo treats 0.x releases).

file(STRINGS "${CMAKE_CURRENT_LIST_DIR}/../Cargo.toml" _pwh_line
     REGEX "^version = \"[0-9]+\\.[0-9]+\\.[0-9]+.*\"" LIMIT_COUNT 1)
string(REGEX REPLACE "^version = \"([0-9]+\\.[0-9]+\\.[0-9]+)[^\"]*\".*" "\\1" PACKAGE_VERSION "${_pwh_line}")
string(REGEX REPLACE "^([0-9]+)\\.([0-9]+)\\..*" "\\1" _pwh_major "${PACKAGE_VERSION}")
string(REGEX REPLACE "^([0-9]+)\\.([0-9]+)\\..*" "\\2" _pwh_minor "${PACKAGE_VERSION}")

set(PACKAGE_VERSION_EXACT FALSE)
if(NOT PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
elseif(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION
       OR NOT PACKAGE_FIND_VERSION_MAJOR EQUAL _pwh_major
       OR (_pwh_major EQUAL 0 AND NOT PACKAGE_FIND_VERSION_MINOR EQUAL _pwh_minor))
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION VERSION_EQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
unset(_pwh_line)
unset(_pwh_major)
unset(_pwh_minor)
