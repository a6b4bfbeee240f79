# The self-contained build (SR_STATIC=ON, made by `./dev dist`): every library
# but glibc is linked statically from Debian's static libraries, so that the one
# file runs in notebook images that have none of them installed. The decision
# and its limits are in docs/operations.md ("One file to install").
#
# Included from the top-level CMakeLists.txt before the libraries are looked up:
# pkg_check_modules and FindOpenSSL then resolve every -lNAME to libNAME.a. At
# the end of the configuration (cmake_language DEFER) the sparkrelay target
# gets libcurl's own dependencies, which the imported targets do not carry.

if(CMAKE_VERSION VERSION_LESS 3.21)
  message(FATAL_ERROR "SR_STATIC needs CMake 3.21 or later (cmake_language DEFER, find_library NO_CACHE)")
endif()
if(SR_SANITIZE OR SR_FUZZ)
  message(FATAL_ERROR "SR_STATIC does not combine with SR_SANITIZE or SR_FUZZ")
endif()

set(CMAKE_FIND_LIBRARY_SUFFIXES .a)
set(OPENSSL_USE_STATIC_LIBS TRUE)
# glibc stays dynamic (libc, libm, ld.so): a static glibc cannot load the NSS
# modules (nsswitch.conf) that notebook images use to resolve host names.
# libgcc is linked in so that no libgcc_s.so is needed either.
add_link_options(-static-libgcc)

# Back-ends of Debian's libcurl that have no static library in Debian:
# packaging/curl_unused.c stands in for them (why and why it is safe: there).
set(SR_STATIC_CURL_REPLACED gssapi_krb5 ldap lber rtmp)

function(sr_static_finish)
  # libcurl.pc lists its libraries but not theirs (no Requires.private):
  # those come from the dependencies' own .pc files.
  pkg_check_modules(SR_CURL_STATIC REQUIRED libcurl libpsl libidn2 libssh2 libbrotlidec
                    libzstd zlib)
  set(libs)
  foreach(name IN LISTS SR_CURL_STATIC_STATIC_LIBRARIES)
    if(name IN_LIST SR_STATIC_CURL_REPLACED OR name STREQUAL "pthread" OR name STREQUAL "dl")
      continue()
    endif()
    unset(lib)
    find_library(lib NAMES lib${name}.a NO_CACHE)
    if(NOT lib)
      message(FATAL_ERROR "SR_STATIC: no static lib${name}.a (libcurl needs it): "
                          "./dev dist installs the -dev packages that ship them")
    endif()
    list(APPEND libs ${lib})
  endforeach()
  list(REMOVE_DUPLICATES libs)
  # Objects, not an archive: they must define their symbols before the
  # libraries that need them are scanned (glibc_compat.c: before libc.so).
  target_sources(sparkrelay PRIVATE ${CMAKE_SOURCE_DIR}/packaging/curl_unused.c
                                    ${CMAKE_SOURCE_DIR}/packaging/glibc_compat.c)
  # The libraries that libcurl.a needs, in one group, so that the archives
  # resolve each other whatever their order.
  target_link_libraries(sparkrelay PRIVATE
    "-Wl,--start-group" ${libs} "-Wl,--end-group" ${CMAKE_DL_LIBS} Threads::Threads)
endfunction()

find_package(Threads REQUIRED)
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL sr_static_finish)
