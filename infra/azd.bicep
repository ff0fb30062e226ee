// The Azure Developer CLI's entry point (azure.yaml): a resource group for the azd environment,
// and the registry (main.bicep) in it. Values come from the azd environment
// (infra/azd.parameters.json); scripts/azd-preprovision.sh checks and fills them.

targetScope = 'subscription'

@description('The azd environment: names the resource group (rg-<name>).')
@minLength(1)
@maxLength(64)
param environmentName string

@minLength(1)
param location string

@description('The registry app registration\'s audiences (BERTH_ENTRA_AUDIENCE; infra/entra-app.sh prints them).')
@minLength(1)
param entraAudience string

@description('base64 of at least 32 random bytes (the preprovision hook generates one into the azd environment).')
@secure()
@minLength(44)
param tokenSigningKey string

@description('Disabled: deploy from a machine that reaches the private endpoint, or set BERTH_PUBLIC_NETWORK_ACCESS=Enabled for the first deployment.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

var tags = {
  application: 'berth'
  'azd-env-name': environmentName
}

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module registry 'main.bicep' = {
  name: 'berth'
  scope: group
  params: {
    location: location
    entraAudience: entraAudience
    tokenSigningKey: tokenSigningKey
    publicNetworkAccess: publicNetworkAccess
    tags: tags
  }
}

output AZURE_RESOURCE_GROUP string = group.name
output BERTH_LOGIN_SERVER string = registry.outputs.loginServer
output BERTH_FUNCTION_APP_NAME string = registry.outputs.functionAppName
output BERTH_EGRESS_ADDRESS string = registry.outputs.egressAddress
