# Constraints for the Terraform that `make package` writes (deploy/package.py copies this
# file beside chalice.tf.json, whose own constraints it removes). The package's resources
# were read against the AWS provider's version 5 and 6 upgrade guides (README,
# "Terraform instead"); raise the upper bound after reading the next major's guide.
terraform {
  required_version = ">= 1.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}
