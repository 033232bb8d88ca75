# find_package(ProxyWasmHost) for C servers that use CMake.
#
# Defines the imported target ProxyWasmHost::proxy_wasm_host: the shared library
# libproxy_wasm_host.so with include/proxy_wasm_host.h on its include path.
#
#   cmake -DProxyWasmHost_DIR=/path/to/proxy-wasm-host/cmake ...
#   find_package(ProxyWasmHost 0.1 REQUIRED)
#   target_link_libraries(my_server PRIVATE ProxyWasmHost::proxy_wasm_host)
#
# Cache variables (defaults: this checkout's build/ and include/, made by `make build`):
#   PROXY_WASM_HOST_LIBRARY      the .so, e.g. target/debug/libproxy_wasm_host.so
#   PROXY_WASM_HOST_INCLUDE_DIR  the folder holding proxy_wasm_host.h

get_filename_component(_pwh_root "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)

set(PROXY_WASM_HOST_LIBRARY "${_pwh_root}/build/libproxy_wasm_host.so"
    CACHE FILEPATH "Path of libproxy_wasm_host.so")
set(PROXY_WASM_HOST_INCLUDE_DIR "${_pwh_root}/include"
    CACHE PATH "Folder holding proxy_wasm_host.h")
unset(_pwh_root)

if(NOT EXISTS "${PROXY_WASM_HOST_LIBRARY}")
  set(ProxyWasmHost_FOUND FALSE)
  set(ProxyWasmHost_NOT_FOUND_MESSAGE
      "${PROXY_WASM_HOST_LIBRARY} does not exist: run `make build`, or set PROXY_WASM_HOST_LIBRARY")
  return()
endif()
if(NOT EXISTS "${PROXY_WASM_HOST_INCLUDE_DIR}/proxy_wasm_host.h")
  set(ProxyWasmHost_FOUND FALSE)
  set(ProxyWasmHost_NOT_FOUND_MESSAGE
      "no proxy_wasm_host.h in ${PROXY_WASM_HOST_INCLUDE_DIR}: set PROXY_WASM_HOST_INCLUDE_DIR")
  return()
endif()

if(NOT TARGET ProxyWasmHost::proxy_wasm_host)
  add_library(ProxyWasmHost::proxy_wasm_host SHARED IMPORTED)
  set_target_properties(ProxyWasmHost::proxy_wasm_host PROPERTIES
    IMPORTED_LOCATION "${PROXY_WASM_HOST_LIBRARY}"
    # Cargo gives the library no SONAME: link it by name so that the executable
    # records libproxy_wasm_host.so, found through its RPATH or LD_LIBRARY_PATH.
    IMPORTED_NO_SONAME TRUE
    INTERFACE_INCLUDE_DIRECTORIES "${PROXY_WASM_HOST_INCLUDE_DIR}")
endif()

set(ProxyWasmHost_FOUND TRUE)
